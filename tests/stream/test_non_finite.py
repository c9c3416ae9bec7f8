"""A document whose outputs turn NaN or inf is recorded as an error, never streamed on or indexed."""
from __future__ import annotations

import numpy as np
import torch

from docstream.corpus import Document, Rejected
from docstream.model import build_model
from docstream.testing.checkpoints import make_random_checkpoint
from docstream.stream.engine import ChunkRecord, DocumentDone, Stream

POISON = "~"  # its byte's embedding row is set to NaN below


class ByteTokenizer:
    """Token id = UTF-8 byte: enough for the engine, which only encodes."""

    name, vocab_size = "bytes", 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def _model():
    model = build_model(make_random_checkpoint("7", seed=5, n_layer=2, n_embd=32, head_size=16, vocab_size=256,
                                               lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16}))
    with torch.no_grad():
        model.emb.weight[ord(POISON)] = float("nan")  # as fp16 overflow would leave it: past the load checks
    return model


def test_a_document_turning_non_finite_is_rejected_and_its_companions_stream_on() -> None:
    docs = [Document.from_text("clean-a", "abcdefgh" * 5), Document.from_text("poisoned", "abcdefgh" * 2 + POISON * 3
                                                                              + "abcdefgh" * 3),
            Document.from_text("clean-b", "hgfedcba" * 4)]
    events = list(Stream(_model(), ByteTokenizer(), chunk_len=8, batch_size=3, snapshot_every=1).run(docs))

    chunks = [e for e in events if isinstance(e, ChunkRecord)]
    assert all(np.isfinite(v).all() for e in chunks for v in e.vectors.values())
    assert all(e.state is None or all(torch.isfinite(t).all() for t in e.state.parts().values()) for e in chunks)
    # the poisoned document: its two clean chunks, then a rejection at the chunk with the NaN token, then nothing
    assert [e.chunk_index for e in chunks if e.doc_id == "poisoned"] == [0, 1]
    (rejected,) = [e for e in events if isinstance(e, Rejected)]
    assert (rejected.doc_id, rejected.source, rejected.reason) == ("poisoned", "poisoned", "non_finite")
    assert "chunk 2 (tokens 16-24)" in rejected.detail and "vector" in rejected.detail
    assert events.index(rejected) > max(events.index(e) for e in chunks if e.doc_id == "poisoned")
    assert not [e for e in events[events.index(rejected):] if getattr(e, "doc_id", None) == "poisoned"
                and e is not rejected]
    done = {e.doc_id for e in events if isinstance(e, DocumentDone)}
    assert done == {"clean-a", "clean-b"}


def test_clean_documents_give_the_same_vectors_beside_a_poisoned_one() -> None:
    model, tok = _model(), ByteTokenizer()
    clean = Document.from_text("clean", "the quick brown fox " * 3)
    alone = [e for e in Stream(model, tok, chunk_len=8, batch_size=2).run([clean]) if isinstance(e, ChunkRecord)]
    mixed = [e for e in Stream(model, tok, chunk_len=8, batch_size=2).run(
        [Document.from_text("bad", POISON * 30), clean]) if isinstance(e, ChunkRecord)]
    assert [e.doc_id for e in mixed] == ["clean"] * len(alone)
    for a, b in zip(alone, mixed):
        assert all(np.array_equal(a.vectors[k], b.vectors[k]) for k in a.vectors)
