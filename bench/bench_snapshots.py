"""What a run's writes cost per committed byte, on 169M-shape states (L=12, C=768, head 64).

Two parts:

* ``settings``: bytes per snapshot, write time into memory and time to read one snapshot back (with the
  filters ``RunStore.read_snapshot`` uses) for Parquet settings of the snapshot table, on RWKV-4 and -7
  fp32 states; and the same for the embeddings table (three float32 lists of C values per chunk).
* ``path``: the write path of a commit as ``docstream run`` does it -- ``State.to_bytes`` per document,
  sha256 of each state, the Arrow table, and the part (``encode_part`` and the atomic write in
  ``RunStore.commit``: write_table, sha256 of the part, write, fsync, rename) -- for RWKV-7 fp32 and
  bf16 states of a batch of 16 documents, "before" (the earlier ``to_bytes``, settings and read-back
  hashing, kept here as references) and "after" (the code as it is), the part writes of both
  interleaved. write_table (into memory), the part's sha256 and
  write+fsync (rewriting one file) are also timed apart, and reading one snapshot back as
  ``RunStore.read_snapshot`` does.

States come from streaming random tokens through random 169M-shape checkpoints, so their bits look like
real activations rather than zeros. Times are medians of ``--repeat`` runs: the CPU time of the calling
thread for writes (wall time swings with the load of a shared machine), wall time for the part write as
a whole (it waits for the disk in fsync) and for reads (Arrow decodes on its own threads).

    python bench/bench_snapshots.py [--part settings|path|all] [--repeat 5] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docstream.checksum import sha256_bytes  # noqa: E402
from docstream.files import atomic_write_hashed  # noqa: E402
from docstream.model import build_model  # noqa: E402
from docstream.model.state import State  # noqa: E402
from docstream.store.run_store import RunStore, SnapshotRef  # noqa: E402
from docstream.store.schemas import SCHEMAS, WRITE_OPTIONS  # noqa: E402
from docstream.testing.checkpoints import make_random_checkpoint  # noqa: E402

N_DOCS = 16
#: the settings WRITE_OPTIONS held before this measurement
OLD_OPTIONS = {"snapshots": dict(compression="zstd", row_group_size=1, use_dictionary=["doc_id", "model_fingerprint"]),
               "embeddings": dict(compression="zstd", row_group_size=8192)}
N_CHUNKS = 1024  # embedding rows per commit in the embeddings settings table
_DICT = ["doc_id", "model_fingerprint"]
_SMALL = [c for c in SCHEMAS["snapshots"].names if c != "state"]
SNAPSHOT_SETTINGS = {
    "none, group 16": dict(compression="none", row_group_size=16, use_dictionary=_DICT),
    "zstd, group 16": dict(compression="zstd", row_group_size=16, use_dictionary=_DICT),
    "zstd, group 1 (old)": OLD_OPTIONS["snapshots"],
    "none, group 1": dict(compression="none", row_group_size=1, use_dictionary=_DICT),
    "zstd but state, group 1": dict(compression={"state": "none"} | {c: "zstd" for c in _SMALL}, row_group_size=1,
                                    use_dictionary=_DICT),
    "zstd but state, no state stats": dict(compression={"state": "none"} | {c: "zstd" for c in _SMALL},
                                           row_group_size=1, use_dictionary=_DICT, write_statistics=_SMALL),
    "none, group 1, no state stats": dict(compression="none", row_group_size=1, use_dictionary=_DICT,
                                          write_statistics=_SMALL),
    "current WRITE_OPTIONS": WRITE_OPTIONS["snapshots"],
}
_FLOATS = ["embedding", "embedding_mean", "embedding_state"]
EMBEDDING_SETTINGS = {
    "zstd, dictionary all (old)": OLD_OPTIONS["embeddings"],
    "zstd, dictionary doc_id": dict(compression="zstd", row_group_size=8192, use_dictionary=["doc_id"]),
    "zstd, dict doc_id, no float stats": dict(compression="zstd", row_group_size=8192, use_dictionary=["doc_id"],
                                              write_statistics=["doc_id", "chunk_index", "token_start", "token_end"]),
    "none, dict doc_id, no float stats": dict(compression="none", row_group_size=8192, use_dictionary=["doc_id"],
                                              write_statistics=["doc_id", "chunk_index", "token_start", "token_end"]),
    "current WRITE_OPTIONS": WRITE_OPTIONS["embeddings"],
}


def median_time(fn, repeat: int, clock=time.thread_time) -> float:
    """Median time over ``repeat`` calls of ``fn``: by default the CPU time of this thread (wall time swings
    with the load of a shared machine; what a commit costs the writer is its CPU time). Reads pass
    ``time.perf_counter``: Arrow decodes on its own threads."""
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def batch_state(version: str, n: int) -> State:
    sd = make_random_checkpoint(version, n_layer=12, n_embd=768, head_size=64, vocab_size=1024, seed=0)
    toks = torch.randint(0, 1024, (n, 64), generator=torch.Generator().manual_seed(0))
    _, state = build_model(sd).forward(toks)
    return state


def snapshot_table(blobs: list[bytes]) -> pa.Table:
    rows = [dict(doc_id=f"doc{i}", chunk_index=3, token_start=3072, token_end=4096, is_final=False,
                 model_fingerprint="f" * 64, state=b, state_sha256=sha256_bytes(b)) for i, b in enumerate(blobs)]
    return pa.Table.from_pylist(rows, schema=SCHEMAS["snapshots"])


def embeddings_table(n: int, c: int = 768) -> pa.Table:
    g = torch.Generator().manual_seed(1)
    vecs = {name: list(torch.randn(n, c, generator=g).numpy()) for name in _FLOATS}
    return pa.table({"doc_id": [f"doc{i // 64}" for i in range(n)], "chunk_index": pa.array(
        [i % 64 for i in range(n)], pa.int32()), "token_start": [i * 1024 for i in range(n)],
        "token_end": [i * 1024 + 1024 for i in range(n)], **vecs}).cast(SCHEMAS["embeddings"])


def to_memory(table: pa.Table, options: dict) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def bench_settings(repeat: int) -> None:
    print(f"{'table':>10} {'setting':>36} {'bytes/row':>11} {'vs raw':>7} {'write ms/row':>12} {'read ms':>8}")
    for version in ("4", "7"):
        blobs = batch_state(version, N_DOCS).to_rows()
        table = snapshot_table(blobs)
        for label, options in SNAPSHOT_SETTINGS.items():
            write = median_time(lambda: to_memory(table, options), repeat) / N_DOCS
            data = to_memory(table, options)
            read = median_time(lambda: pq.read_table(pa.BufferReader(data), schema=SCHEMAS["snapshots"], filters=[
                ("doc_id", "=", "doc11"), ("chunk_index", "=", 3)]), repeat, time.perf_counter)
            size = data.size / N_DOCS
            print(f"{'rwkv' + version:>10} {label:>36} {size:>11,.0f} {size / len(blobs[0]):>7.3f} "
                  f"{write * 1e3:>12.3f} {read * 1e3:>8.2f}")
    table = embeddings_table(N_CHUNKS)
    raw = 3 * 768 * 4
    for label, options in EMBEDDING_SETTINGS.items():
        write = median_time(lambda: to_memory(table, options), repeat) / N_CHUNKS
        data = to_memory(table, options)
        read = median_time(lambda: pq.read_table(pa.BufferReader(data), schema=SCHEMAS["embeddings"]), repeat,
                           time.perf_counter)
        size = data.size / N_CHUNKS
        print(f"{'embeddings':>10} {label:>36} {size:>11,.0f} {size / raw:>7.3f} {write * 1e3:>12.3f} "
              f"{read * 1e3:>8.2f}")


def old_to_bytes(state: State) -> bytes:
    """``State.to_bytes`` as it was: each part copied out with ``tobytes``, then joined (same bytes)."""
    header, buffers = {"version": state.version, "parts": {}}, []
    for name, t in state.parts().items():
        t = t.detach().cpu().contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header["parts"][name] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                                 "nbytes": len(raw)}
        buffers.append(raw)
    head = json.dumps(header, sort_keys=True).encode()
    return b"".join([b"DSSTATE1", struct.pack("<I", len(head)), head, *buffers])


def new_write_part(path: Path, name: str, table: pa.Table) -> str:
    """A part as ``RunStore.commit`` writes it now: encoded and hashed in memory, then written atomically."""
    from docstream.files import atomic_write_bytes
    from docstream.store.run_store import encode_part

    part = encode_part(name, table)
    atomic_write_bytes(path, part.data)
    return part.sha256


def old_write_part(path: Path, name: str, table: pa.Table) -> str:
    """``RunStore._write_part`` as it was: the earlier settings, written to the temp file, hashed by
    reading the file back."""
    return atomic_write_hashed(path, lambda tmp: pq.write_table(table.cast(SCHEMAS[name]), tmp, **OLD_OPTIONS[name]))


def bench_path(repeat: int, directory: str | None) -> None:
    state = batch_state("7", N_DOCS)
    print(f"RWKV-7 169M shape, {N_DOCS} documents per commit, CPU ms per commit (median of {repeat}, before and "
          f"after interleaved); part = write_table + sha256 + write + fsync + rename")
    print(f"{'dtype':>5} {'':>6} {'state MB':>8} {'to_bytes':>8} {'sha256':>7} {'table':>6} {'part wall':>9} "
          f"{'part CPU':>8} | {'write_table':>11} {'hash':>5} {'write+fsync':>11} | {'CPU total':>9} {'MB/s':>5} "
          f"{'part MB':>7} {'read one':>8}")
    for dtype in ("fp32", "bf16"):
        s = state.to(dtype=dtype)
        rows = [s.select(i) for i in range(N_DOCS)]
        blobs = [r.to_bytes() for r in rows]
        assert blobs == [old_to_bytes(r) for r in rows]
        mb = sum(map(len, blobs)) / 1e6
        table = snapshot_table(blobs)
        hashing = median_time(lambda: [sha256_bytes(b) for b in blobs], repeat)
        build = median_time(lambda: snapshot_table(blobs), repeat)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            store = RunStore(Path(tmp) / "run")
            store.acquire()
            times = {"before": [], "after": []}
            cpu = {"before": [], "after": []}
            parts = {"before": old_write_part, "after": new_write_part}
            for i in range(repeat):  # interleaved, so both see the same disk and load
                for when, write in parts.items():
                    path = store.out / "snapshots" / f"part-{when}-{i}.parquet"
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    write(path, "snapshots", table)
                    times[when].append(time.perf_counter() - start)
                    cpu[when].append(time.thread_time() - start_cpu)
                    if i > 0:  # freed page-cache pages are reused, as on a machine whose cache is full
                        path.unlink()
            for when, options in (("before", OLD_OPTIONS), ("after", WRITE_OPTIONS)):
                serialize = median_time(lambda: [(old_to_bytes if when == "before" else State.to_bytes)(r)
                                                 for r in rows], repeat)
                write_table = median_time(lambda: to_memory(table, options["snapshots"]), repeat)
                data = to_memory(table, options["snapshots"])
                hash_part = median_time(lambda: sha256_bytes(data), repeat)
                fsync = median_time(lambda: _write_fsync(Path(tmp) / "f", data), repeat)
                path = store.out / "snapshots" / f"part-{when}-0.parquet"
                read = median_time(lambda: read_one(path, "doc11", 3), repeat, time.perf_counter)
                part, part_cpu = statistics.median(times[when]), statistics.median(cpu[when])
                total = serialize + hashing + build + part_cpu
                print(f"{dtype:>5} {when:>6} {mb:>8.1f} {serialize * 1e3:>8.1f} {hashing * 1e3:>7.1f} "
                      f"{build * 1e3:>6.1f} {part * 1e3:>9.1f} {part_cpu * 1e3:>8.1f} | {write_table * 1e3:>11.1f} "
                      f"{hash_part * 1e3:>5.1f} {fsync * 1e3:>11.1f} | {total * 1e3:>9.1f} {mb / total:>5.0f} "
                      f"{data.size / 1e6:>7.1f} {read * 1e3:>8.2f}")
            store.commit(1, {"snapshots": table}, [], [], {})
            ref = SnapshotRef("snapshots/part-00000001.parquet", 3, 4096)
            assert State.from_bytes(store.read_snapshot("doc11", ref)["state"]).equal(rows[11])
            store.release()


def read_one(path: Path, doc_id: str, chunk_index: int) -> dict:
    """What ``RunStore.read_snapshot`` reads: one row, by the filters it uses."""
    return pq.read_table(path, schema=SCHEMAS["snapshots"],
                         filters=[("doc_id", "=", doc_id), ("chunk_index", "=", chunk_index)]).to_pylist()[0]


def _write_fsync(path: Path, data: pa.Buffer) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("settings", "path", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="folder for the run written by the path part (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.part in ("settings", "all"):
        bench_settings(args.repeat)
    if args.part in ("path", "all"):
        bench_path(args.repeat, args.dir)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
