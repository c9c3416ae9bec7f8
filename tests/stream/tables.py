"""A run's four output tables, rows sorted by their keys: what two runs must agree on row for row."""
from __future__ import annotations

from pathlib import Path

from docstream.stream.store import RunStore

KEYS = {"embeddings": ("doc_id", "chunk_index"), "snapshots": ("doc_id", "chunk_index"),
        "documents": ("doc_id",), "errors": ("source",)}


def sorted_tables(out: Path) -> dict[str, list[dict]]:
    store = RunStore(out)
    return {name: sorted(store.read_table(name).to_pylist(), key=lambda r, k=k: tuple(r[c] for c in k))
            for name, k in KEYS.items()}
