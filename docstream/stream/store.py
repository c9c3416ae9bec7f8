"""The output directory of a run: Parquet parts committed through an append-only log of commit records.

Layout of ``OUT``::

    config.json              the run's settings and the fingerprints of its model and tokenizer
    .lock                    held (flock) by the one run writing here
    commits/00000001.json    commit records, one per flush, each written atomically
    embeddings/part-00000001.parquet   per-chunk vectors   (doc_id, chunk_index, token_start, token_end,
                                       embedding = last-token hidden state, embedding_mean, embedding_state)
    snapshots/part-00000001.parquet    per-document states (..., model_fingerprint, state, state_sha256)
    documents/part-00000001.parquet    one row per finished document (token counts, repairs made)
    errors/part-00000001.parquet       one row per rejected document (reason, detail)

A part file counts only once a commit record names it; the record is written after its parts, each
with temp file + fsync + rename, so a crash at any moment leaves either a complete commit or files no
record names (removed on the next open). The commit record also carries the progress needed to
resume: finished documents, rejected sources, and for each unfinished document its latest snapshot.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from docstream.checksum import sha256_bytes, sha256_file

TABLES = ("embeddings", "snapshots", "documents", "errors")

SCHEMAS = {
    "embeddings": pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                             ("token_end", pa.int64()), ("embedding", pa.list_(pa.float32())),
                             ("embedding_mean", pa.list_(pa.float32())), ("embedding_state", pa.list_(pa.float32()))]),
    "snapshots": pa.schema([("doc_id", pa.string()), ("chunk_index", pa.int32()), ("token_start", pa.int64()),
                            ("token_end", pa.int64()), ("is_final", pa.bool_()), ("model_fingerprint", pa.string()),
                            ("state", pa.binary()), ("state_sha256", pa.string())]),
    "documents": pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("n_tokens", pa.int64()),
                            ("n_chunks", pa.int32()), ("invalid_utf8_bytes", pa.int64()), ("nul_chars", pa.int64())]),
    "errors": pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("reason", pa.string()),
                         ("detail", pa.string())]),
}
# Snapshot settings chosen with bench/bench_snapshots.py on 169M-shape fp32 states (see bench/RESULTS.md):
# zstd saves ~7% over raw (recurrent states barely compress) and one row per row group makes reading a
# single document's snapshot ~15x faster than groups of 16, for ~1% more bytes.
WRITE_OPTIONS = {
    "embeddings": dict(compression="zstd", row_group_size=8192),
    "snapshots": dict(compression="zstd", row_group_size=1, use_dictionary=["doc_id", "model_fingerprint"]),
    "documents": dict(compression="zstd"),
    "errors": dict(compression="zstd"),
}


class RunLockedError(RuntimeError):
    """Another process is writing the same output directory."""


@dataclass(frozen=True)
class SnapshotRef:
    """Where the latest committed snapshot of an unfinished document lives."""

    part: str
    chunk_index: int
    token_end: int


@dataclass
class Progress:
    """What the committed records say has been done."""

    finished: set[str] = field(default_factory=set)
    rejected_sources: set[str] = field(default_factory=set)
    in_flight: dict[str, SnapshotRef] = field(default_factory=dict)
    last_seq: int = 0


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def try_lock(path: Path) -> int | None:
    """Open ``path`` (created if needed) and take an exclusive ``flock`` on it without waiting: the
    open descriptor, or None when another process holds the lock. Closing the descriptor, or the
    process ending, releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunStore:
    """Reads and writes one run's output directory."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self._lock_fd: int | None = None

    # -- locking -------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the directory's lock (released by :meth:`release` or when the process dies)."""
        self.out.mkdir(parents=True, exist_ok=True)
        fd = try_lock(self.out / ".lock")
        if fd is None:
            raise RunLockedError(f"{self.out} is being written by another docstream run "
                                 f"(its lock {self.out / '.lock'} is held); wait for it to finish")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for table in TABLES:
            (self.out / table).mkdir(exist_ok=True)
        (self.out / "commits").mkdir(exist_ok=True)
        self._remove_uncommitted()

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- config --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.out / "config.json"

    def read_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            return None
        return json.loads(self.config_path.read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.config_path, json.dumps(config, indent=2, sort_keys=True).encode())

    # -- commits -------------------------------------------------------------------------------
    def commit_records(self) -> Iterator[dict[str, Any]]:
        """Committed records in order of their sequence number."""
        for path in sorted((self.out / "commits").glob("*.json")):
            yield json.loads(path.read_text())

    def progress(self) -> Progress:
        progress = Progress()
        for record in self.commit_records():
            progress.last_seq = record["seq"]
            progress.finished.update(record["finished"])
            progress.rejected_sources.update(record["rejected_sources"])
            for doc_id in record["finished"]:
                progress.in_flight.pop(doc_id, None)
            for doc_id, ref in record["in_flight"].items():
                progress.in_flight[doc_id] = SnapshotRef(**ref)
        return progress

    def commit(self, seq: int, tables: dict[str, pa.Table], finished: list[str], rejected_sources: list[str],
               in_flight: dict[str, SnapshotRef]) -> None:
        """Write the non-empty ``tables`` as part ``seq``, then the commit record that makes them count."""
        files = {}
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
            rel = f"{name}/part-{seq:08d}.parquet"
            files[name] = {"path": rel, "rows": table.num_rows, "sha256": self._write_part(self.out / rel, name, table)}
        record = {"seq": seq, "files": files, "finished": finished, "rejected_sources": rejected_sources,
                  "in_flight": {d: vars(ref) for d, ref in in_flight.items()}}
        atomic_write_bytes(self.out / "commits" / f"{seq:08d}.json", json.dumps(record, sort_keys=True).encode())

    def _write_part(self, path: Path, name: str, table: pa.Table) -> str:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table.cast(SCHEMAS[name]), tmp, **WRITE_OPTIONS[name])
        digest = sha256_file(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return digest

    def committed_files(self, table: str) -> list[Path]:
        return [self.out / r["files"][table]["path"] for r in self.commit_records() if table in r["files"]]

    def read_table(self, table: str) -> pa.Table:
        """Every committed row of ``table`` (an empty table with the schema when there are none)."""
        files = self.committed_files(table)
        if not files:
            return SCHEMAS[table].empty_table()
        return pa.concat_tables(pq.read_table(f, schema=SCHEMAS[table]) for f in files)

    def read_snapshot(self, doc_id: str, ref: SnapshotRef) -> dict[str, Any]:
        """The committed snapshot row ``ref`` points at, checksum verified."""
        path = self.out / ref.part
        rows = pq.read_table(path, filters=[("doc_id", "=", doc_id), ("chunk_index", "=", ref.chunk_index)],
                             schema=SCHEMAS["snapshots"]).to_pylist()
        if len(rows) != 1:
            raise ValueError(f"snapshot of {doc_id!r} at chunk {ref.chunk_index} is missing from {path} "
                             f"({len(rows)} rows found); the output directory is damaged")
        row = rows[0]
        if sha256_bytes(row["state"]) != row["state_sha256"]:
            raise ValueError(f"snapshot of {doc_id!r} at chunk {ref.chunk_index} in {path} fails its checksum; "
                             f"the file is corrupt")
        return row

    def _remove_uncommitted(self) -> None:
        """Delete temp files and parts that no commit record names (left by a crash)."""
        named = {r["files"][t]["path"] for r in self.commit_records() for t in r["files"]}
        for table in (*TABLES, "commits"):
            for path in (self.out / table).iterdir():
                rel = f"{table}/{path.name}"
                if path.name.startswith(".") or (table != "commits" and rel not in named):
                    path.unlink()
