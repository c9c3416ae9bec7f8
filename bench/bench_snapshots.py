"""Bytes per snapshot and write/read time for Parquet settings, on 169M-shape states of RWKV-4 and 7.

States come from streaming random tokens through random 169M-shape checkpoints (fp32), so their bits
look like real activations rather than zeros. Each setting writes the same 32 snapshots.

    python bench/bench_snapshots.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docstream.checksum import sha256_bytes  # noqa: E402
from docstream.model import build_model  # noqa: E402
from docstream.testing.checkpoints import make_random_checkpoint  # noqa: E402
from docstream.store.schemas import SCHEMAS  # noqa: E402

SETTINGS = [("none", 16), ("snappy", 16), ("zstd", 16), ("zstd", 1), ("none", 128)]
N_SNAPSHOTS = 32


def states(version: str) -> list[bytes]:
    sd = make_random_checkpoint(version, n_layer=12, n_embd=768, head_size=64, vocab_size=1024, seed=0)
    model = build_model(sd)
    toks = torch.randint(0, 1024, (N_SNAPSHOTS, 64), generator=torch.Generator().manual_seed(0))
    _, state = model.forward(toks)
    return state.to_rows()


def table(blobs: list[bytes]) -> pa.Table:
    rows = [dict(doc_id=f"doc{i}", chunk_index=3, token_start=3072, token_end=4096, is_final=False,
                 model_fingerprint="f" * 64, state=b, state_sha256=sha256_bytes(b)) for i, b in enumerate(blobs)]
    return pa.Table.from_pylist(rows, schema=SCHEMAS["snapshots"])


def main() -> None:
    torch.set_num_threads(2)
    print(f"{'version':>7} {'compression':>11} {'row group':>9} {'bytes/snapshot':>15} {'vs raw':>7} "
          f"{'write ms/snap':>13} {'read one ms':>11}")
    for version in ("4", "7"):
        blobs = states(version)
        raw = len(blobs[0])
        t = table(blobs)
        with tempfile.TemporaryDirectory() as tmp:
            for compression, group in SETTINGS:
                path = Path(tmp) / f"{compression}-{group}.parquet"
                start = time.perf_counter()
                pq.write_table(t, path, compression=compression, row_group_size=group,
                               use_dictionary=["doc_id", "model_fingerprint"])
                write = (time.perf_counter() - start) / N_SNAPSHOTS
                start = time.perf_counter()
                pq.read_table(path, filters=[("doc_id", "=", "doc17"), ("chunk_index", "=", 3)])
                read = time.perf_counter() - start
                size = path.stat().st_size / N_SNAPSHOTS
                print(f"{version:>7} {compression:>11} {group:>9} {size:>15,.0f} {size / raw:>7.3f} "
                      f"{write * 1e3:>13.2f} {read * 1e3:>11.1f}")


if __name__ == "__main__":
    main()
