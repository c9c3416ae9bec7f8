"""Streaming long documents through RWKV models: corpus readers, chunking, the batching engine, the
Parquet snapshot store and the resumable ``run``.

Python use::

    from docstream.model import load_model
    from docstream.tokenizer import load_tokenizer
    from docstream.stream import Stream, iter_corpus, ChunkRecord

    stream = Stream(load_model("model.pth"), load_tokenizer("vocab.txt"), chunk_len=1024, batch_size=8)
    for event in stream.run(iter_corpus("corpus/")):
        if isinstance(event, ChunkRecord):
            ...  # event.vectors["last"], event.state (a State when a snapshot is due)
"""

from docstream.stream.chunker import TokenChunk, iter_chunks, iter_tokens, text_of_span
from docstream.stream.config import RunConfig, build_config
from docstream.stream.corpus import Document, Rejected, TextStats, iter_corpus
from docstream.stream.engine import ChunkRecord, DocumentDone, Stream, StreamTask
from docstream.stream.run import RunSummary, run
from docstream.stream.store import RunStore

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
