"""The background committer's encoding: tables built column by column and states serialized into a
reused buffer give exactly the rows and bytes of the plain way."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from docstream.model import State
from docstream.store.schemas import SCHEMAS
from docstream.stream.committer import Arena, PendingCommit, build_table


def _states(seed: int, dtype: torch.dtype, rows: int = 3) -> State:
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(rows, 2, 8, generator=g).to(dtype)
    return State("7", shift, torch.randn(rows, 2, 2, 4, 4, generator=g), shift.clone() * 2)


def _snapshot_rows(state: State, tag: str) -> list[dict]:
    return [dict(doc_id=f"{tag}{i}", chunk_index=i, token_start=0, token_end=16 * (i + 1), is_final=i == 2,
                 model_fingerprint="f" * 64, state=state.select(i)) for i in range(state.batch_size)]


def _plain(rows: list[dict]) -> pa.Table:
    """The rows as the plain row-by-row way builds them (to_bytes and sha256 per row)."""
    return pa.Table.from_pylist([dict(r, state=r["state"].to_bytes(),
                                      state_sha256=hashlib.sha256(r["state"].to_bytes()).hexdigest()) for r in rows],
                                schema=SCHEMAS["snapshots"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_snapshot_table_equals_the_plain_one(dtype):
    rows = _snapshot_rows(_states(0, dtype), "d")
    assert build_table("snapshots", rows, Arena()).equals(_plain(rows))


def test_a_reused_arena_does_not_touch_parts_already_encoded():
    arena = Arena()
    first, second = _snapshot_rows(_states(1, torch.float32), "a"), _snapshot_rows(_states(2, torch.float32), "b")
    empty = {"embeddings": [], "documents": [], "errors": []}
    part_a = PendingCommit(1, dict(empty, snapshots=first), [], [], {}, {}).encode(arena)["snapshots"]
    PendingCommit(2, dict(empty, snapshots=second), [], [], {}, {}).encode(arena)  # overwrites the arena
    read = pq.read_table(pa.BufferReader(part_a.data))
    assert read.equals(_plain(first))
    assert part_a.sha256 == hashlib.sha256(part_a.data).hexdigest()


def test_embedding_vectors_column_by_column_equal_the_plain_rows():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 3, 6)).astype(np.float32)
    rows = [dict(doc_id=f"d{i % 2}", chunk_index=i, token_start=8 * i, token_end=8 * i + 8,
                 vectors={"last": vectors[i, 0], "mean": vectors[i, 1], "state": vectors[i, 2]}) for i in range(5)]
    plain = pa.Table.from_pylist([dict(doc_id=r["doc_id"], chunk_index=r["chunk_index"], token_start=r["token_start"],
                                       token_end=r["token_end"], embedding=r["vectors"]["last"],
                                       embedding_mean=r["vectors"]["mean"], embedding_state=r["vectors"]["state"])
                                  for r in rows], schema=SCHEMAS["embeddings"])
    assert build_table("embeddings", rows).equals(plain)
