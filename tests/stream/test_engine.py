"""The Stream engine's Python API: what run() accepts."""
from __future__ import annotations

import pytest

from docstream.model import build_model
from docstream.testing.checkpoints import make_random_checkpoint
from docstream.stream import ChunkRecord, Document, DocumentDone, Stream
from docstream.tokenizer import default_world_vocab_path, load_tokenizer

LORA = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}


@pytest.fixture(scope="module")
def stream():
    model = build_model(make_random_checkpoint("7", n_layer=1, n_embd=32, head_size=16, vocab_size=65536,
                                               seed=1, lora=LORA))
    return Stream(model, load_tokenizer(default_world_vocab_path()), chunk_len=4, batch_size=2)


def test_plain_strings_are_documents_with_ids_from_their_position(stream):
    texts = ["The first text, long enough for a few chunks.", "Second.", "And a third one."]
    events = list(stream.run(texts))
    done = {e.doc_id: e for e in events if isinstance(e, DocumentDone)}
    assert sorted(done) == ["doc-0", "doc-1", "doc-2"]
    # the same as documents made from the texts with those ids
    docs = [Document.from_text(f"doc-{i}", t) for i, t in enumerate(texts)]
    want = [(e.doc_id, e.chunk_index, e.token_end) for e in stream.run(docs) if isinstance(e, ChunkRecord)]
    assert [(e.doc_id, e.chunk_index, e.token_end) for e in events if isinstance(e, ChunkRecord)] == want
    assert done["doc-0"].n_chunks > 1


def test_one_string_or_another_type_is_refused(stream):
    with pytest.raises(ValueError, match=r"wrap it in a list"):
        next(stream.run("one text"))
    with pytest.raises(ValueError, match=r"input 1 is a bytes"):
        list(stream.run(["fine", b"bytes"]))
