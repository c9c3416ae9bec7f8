"""The commit writer's grouping rules, which resume correctness rests on."""
import numpy as np
import torch

from docstream.corpus import TextStats
from docstream.model import State
from docstream.store.run_store import RunStore
from docstream.stream.engine import ChunkRecord, DocumentDone
from docstream.stream.run import _CommitWriter


def _state():
    return State("7", torch.zeros(1, 1, 4), torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 4))


def _chunk(index, is_last, snapshot):
    vec = np.zeros(4, dtype=np.float32)
    return ChunkRecord("doc", index, index * 8, index * 8 + 8, is_last, {"last": vec, "mean": vec, "state": vec},
                       _state() if snapshot else None)


def test_last_chunk_and_document_done_share_a_commit(tmp_path):
    store = RunStore(tmp_path / "out")
    store.acquire()
    try:
        writer = _CommitWriter(store, 0, "f" * 64, commit_every=1)
        writer.add(_chunk(0, is_last=False, snapshot=True))
        assert store.progress().in_flight["doc"].chunk_index == 0
        writer.add(_chunk(1, is_last=True, snapshot=True))
        assert store.progress().last_seq == 1, "the final chunk must not be committed without its DocumentDone"
        writer.add(DocumentDone("doc", "doc.txt", 16, 2, TextStats()))
        progress = store.progress()
        assert progress.finished == {"doc"} and "doc" not in progress.in_flight
        assert store.read_table("embeddings").num_rows == 2
    finally:
        store.release()


def test_embeddings_wait_for_a_snapshot_that_covers_them(tmp_path):
    store = RunStore(tmp_path / "out")
    store.acquire()
    try:
        writer = _CommitWriter(store, 0, "f" * 64, commit_every=1)
        writer.add(_chunk(0, is_last=False, snapshot=False))
        writer.add(_chunk(1, is_last=False, snapshot=False))
        assert store.read_table("embeddings").num_rows == 0
        writer.add(_chunk(2, is_last=False, snapshot=True))
        assert store.read_table("embeddings").num_rows == 3
        assert store.progress().in_flight["doc"].token_end == 24
    finally:
        store.release()
