"""The stream stage: the batching engine that streams documents through an RWKV model, the resumable
``run`` job that commits its outputs to the store, and the Ray engine. The corpus and store names
most callers need are re-exported here.

Python use::

    from docstream.model import load_model
    from docstream.tokenizer import load_tokenizer
    from docstream.stream import Stream, iter_corpus, ChunkRecord

    stream = Stream(load_model("model.pth"), load_tokenizer("vocab.txt"), chunk_len=1024, batch_size=8)
    for event in stream.run(iter_corpus("corpus/")):
        if isinstance(event, ChunkRecord):
            ...  # event.vectors["last"], event.state (a State when a snapshot is due)
"""

from docstream.corpus import (
                              Document,
                              Rejected,
                              TextStats,
                              TokenChunk,
                              iter_chunks,
                              iter_corpus,
                              iter_tokens,
                              text_of_span,
)
from docstream.store import RunConfig, RunStore, build_config
from docstream.stream.engine import ChunkRecord, DocumentDone, Stream, StreamTask
from docstream.stream.run import RunSummary, run

__all__ = [
    "ChunkRecord",
    "Document",
    "DocumentDone",
    "Rejected",
    "RunConfig",
    "RunStore",
    "RunSummary",
    "Stream",
    "StreamTask",
    "TextStats",
    "TokenChunk",
    "build_config",
    "iter_chunks",
    "iter_corpus",
    "iter_tokens",
    "run",
    "text_of_span",
]
