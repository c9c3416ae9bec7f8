"""A run's four output tables, rows sorted by their keys, and what two runs must agree on row for row."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from docstream.model import State
from docstream.store.run_store import RunStore

KEYS = {"embeddings": ("doc_id", "chunk_index"), "snapshots": ("doc_id", "chunk_index"),
        "documents": ("doc_id",), "errors": ("source",)}


def sorted_tables(out: Path) -> dict[str, list[dict]]:
    store = RunStore(out)
    return {name: sorted(store.read_table(name).to_pylist(), key=lambda r, k=k: tuple(r[c] for c in k))
            for name, k in KEYS.items()}


#: agreement to float32 rounding of two runs' vectors and states whose documents shared batches with
#: other companions (batch sizes, a resume, Ray workers) or were cut into other chunks: a BLAS may
#: round a row differently for another row count (AVX-512, ARM), see tests/blas_variation.py
RUN_TOL = dict(rtol=1e-4, atol=1e-4)


def assert_same_outputs(got: dict[str, list[dict]], want: dict[str, list[dict]]) -> None:
    """The same rows (documents, chunks, token ranges, snapshots, errors: each exactly once), with
    vectors and states equal within RUN_TOL; everything else equal exactly."""
    assert got.keys() == want.keys()
    for table in want:
        assert len(got[table]) == len(want[table]), f"{table}: {len(got[table])} rows, expected {len(want[table])}"
        for g, w in zip(got[table], want[table]):
            assert g.keys() == w.keys(), table
            where = f"{table} {tuple(w[k] for k in KEYS[table])}"
            for column, value in w.items():
                if column == "state_sha256":
                    continue  # a hash of the state's bytes, which carry the rounding
                if column == "state":
                    assert_states_close(State.from_bytes(g[column]), State.from_bytes(value), f"{where} state")
                elif isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                    np.testing.assert_allclose(g[column], value, **RUN_TOL, err_msg=f"{where} {column}")
                else:
                    assert g[column] == value, f"{where} {column}: {g[column]!r} != {value!r}"


def assert_states_close(got: State, want: State, where: str) -> None:
    assert got.version == want.version and got.dtype == want.dtype, where
    for name, part in want.parts().items():
        np.testing.assert_allclose(got.parts()[name].float().numpy(), part.float().numpy(), **RUN_TOL,
                                   err_msg=f"{where} {name}")
