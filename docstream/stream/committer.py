"""Commits written on a background thread, in order, with a bounded queue.

The engine hands over a complete commit (:class:`PendingCommit`: the rows and the progress record
of one commit) and goes on; an encoding thread serializes the snapshot states, hashes them, builds
the Arrow tables and encodes the Parquet parts in memory, and a writing thread calls
:meth:`RunStore.commit`, which hashes the parts and writes each durably before the record that makes
them count. Commits are written strictly one after another in the order they were handed over, so
the record sequence has no gaps. At most ``depth`` commits wait, so memory stays
bounded and a slow disk holds the engine back rather than filling memory.

A failed write (a full disk, say) stops the writer: the commits handed over after it are not
written (a later record must never exist without an earlier one), and the error is raised in the
engine's thread at its next hand-over or at :meth:`Committer.close`. A process killed at any moment
leaves every written record whole and only files that no record names, which the next run removes.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from docstream.checksum import sha256_bytes
from docstream.store.run_store import EncodedPart, RunStore, SnapshotRef, encode_part
from docstream.store.schemas import SCHEMAS, TABLES
from docstream.stream.clock import StageClock

#: vector columns of the embeddings table and the pooling each holds
VECTOR_COLUMNS = {"embedding": "last", "embedding_mean": "mean", "embedding_state": "state"}


@dataclass
class PendingCommit:
    """Everything one commit writes: rows per table (snapshot rows still hold their ``State``), and
    the progress its record carries (see :meth:`RunStore.commit`)."""

    seq: int
    rows: dict[str, list[dict[str, Any]]]
    finished: list[str]
    rejected_sources: list[str]
    in_flight: dict[str, SnapshotRef]
    content: dict[str, str]
    retracted: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    rejected_content: dict[str, str] = field(default_factory=dict)
    cleared: list[str] = field(default_factory=list)

    def encode(self, arena: Arena | None = None, hashed: bool = True) -> dict[str, EncodedPart]:
        """The commit's parts as Parquet bytes (no disk work): states serialized (into ``arena``) and
        hashed, tables built, parts encoded, and hashed unless ``hashed`` is False (then
        :meth:`RunStore.commit` hashes them)."""
        arena = arena or Arena()
        return {name: encode_part(name, build_table(name, self.rows[name], arena), hashed) for name in TABLES}

    def write(self, store: RunStore, parts: dict[str, EncodedPart] | None = None) -> None:
        """Commit: the parts (``parts``, or encoded now), durable, then the record that makes them count."""
        store.commit(self.seq, parts if parts is not None else self.encode(), self.finished, self.rejected_sources,
                     self.in_flight, content=self.content, retracted=self.retracted, gone=self.gone,
                     rejected_content=self.rejected_content, cleared=self.cleared)


def build_table(name: str, rows: list[dict[str, Any]], arena: Arena | None = None) -> pa.Table:
    """The Arrow table of ``rows`` of table ``name``: column by column (vectors as one flat buffer per
    column, snapshot states serialized into ``arena`` and hashed here, once each)."""
    schema = SCHEMAS[name]
    if name == "snapshots" and rows:
        return _snapshot_table(rows, arena)
    if name != "embeddings" or not rows:
        return pa.Table.from_pylist(rows, schema=schema)
    columns = []
    for column in schema:
        if column.name in VECTOR_COLUMNS:
            columns.append(_vectors([row["vectors"][VECTOR_COLUMNS[column.name]] for row in rows]))
        elif column.name == "tokens":
            columns.append(_token_lists([row.get("tokens") for row in rows]))
        else:
            columns.append(pa.array([row[column.name] for row in rows], column.type))
    return pa.Table.from_arrays(columns, schema=schema)


class Arena:
    """One reusable byte buffer that a commit's states are serialized into. Parquet copies what it
    encodes, so the buffer is free again once a part is encoded; reusing it spares the kernel from
    handing out fresh zeroed pages for every state (a large share of the cost on some machines)."""

    def __init__(self) -> None:
        self._buffer = np.empty(0, np.uint8)

    def serialize(self, states: list) -> list[memoryview]:
        """Each state's :meth:`~docstream.model.State.to_bytes` bytes, as views into the buffer (valid
        until the next call)."""
        pieces = [[memoryview(piece).cast("B") for piece in state.byte_pieces()] for state in states]
        total = sum(piece.nbytes for parts in pieces for piece in parts)
        if self._buffer.nbytes < total:
            self._buffer = np.empty(total, np.uint8)
        view, blobs, at = memoryview(self._buffer), [], 0
        for parts in pieces:
            start = at
            for piece in parts:
                view[at:at + piece.nbytes] = piece
                at += piece.nbytes
            blobs.append(view[start:at])
        return blobs


def _snapshot_table(rows: list[dict[str, Any]], arena: Arena | None = None) -> pa.Table:
    """Snapshot rows with their states serialized and hashed once each; each state's bytes become their
    own Arrow chunk without being copied again (a part holds one row per row group anyway)."""
    blobs = (arena or Arena()).serialize([row["state"] for row in rows])
    small = {name: [row[name] for row in rows] for name in SCHEMAS["snapshots"].names
             if name not in ("state", "state_sha256")}
    small["state_sha256"] = [sha256_bytes(blob) for blob in blobs]
    columns = []
    for column in SCHEMAS["snapshots"]:
        if column.name == "state":
            columns.append(pa.chunked_array([_one_binary(blob) for blob in blobs], pa.binary()))
        else:
            columns.append(pa.chunked_array([pa.array(small[column.name], column.type)]))
    return pa.Table.from_arrays(columns, schema=SCHEMAS["snapshots"])


def _one_binary(blob: bytes | memoryview) -> pa.Array:
    """A one-value binary array over ``blob``'s own memory."""
    offsets = pa.py_buffer(np.array([0, len(blob)], np.int32))
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, pa.py_buffer(blob)])


def _vectors(vectors: list[np.ndarray]) -> pa.Array:
    """float32 vectors as a ``list<float32>`` array built from one flat buffer."""
    lengths = np.fromiter((len(v) for v in vectors), np.int32, len(vectors))
    offsets = np.zeros(len(vectors) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in vectors])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))


def _token_lists(tokens: list[np.ndarray | None]) -> pa.Array:
    """Each chunk's token ids as a ``list<int32>`` array from one flat buffer (null where a row has none)."""
    if all(t is None for t in tokens):
        return pa.nulls(len(tokens), pa.list_(pa.int32()))
    if any(t is None for t in tokens):
        return pa.array([None if t is None else np.asarray(t, np.int32) for t in tokens], pa.list_(pa.int32()))
    offsets = np.zeros(len(tokens) + 1, np.int32)
    np.cumsum([len(t) for t in tokens], out=offsets[1:])
    flat = np.concatenate([np.asarray(t, np.int32) for t in tokens])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))


class Committer:
    """Writes :class:`PendingCommit` s in the order they are submitted, on two background threads: one
    encodes (serializes and hashes the states, builds and encodes the Parquet parts), the other writes
    (parts, fsyncs, the record), so the CPU work of a commit overlaps the disk work of the one before."""

    def __init__(self, store: RunStore, clock: StageClock | None = None, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.store, self.clock = store, clock or StageClock()
        self._queue: queue.Queue[PendingCommit | None] = queue.Queue(maxsize=depth)
        # encoded commits waiting for the disk (one: with the one being written and the one being
        # encoded, at most depth + 3 commits are held in memory)
        self._encoded: queue.Queue[tuple[PendingCommit, dict[str, EncodedPart] | BaseException] | None] = \
            queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._encode_loop, name="docstream-encode", daemon=True),
                         threading.Thread(target=self._write_loop, name="docstream-write", daemon=True)]
        for thread in self._threads:
            thread.start()

    def submit(self, commit: PendingCommit) -> None:
        """Queue ``commit`` (waiting while ``depth`` commits wait); raises the error of a failed earlier one."""
        self.check()
        with self.clock.timing("waited for the writer"):
            self._queue.put(commit)

    def drain(self) -> None:
        """Wait until every submitted commit is written; raises the error of a failed one."""
        with self.clock.timing("waited for the writer"):
            self._queue.join()
            self._encoded.join()
        self.check()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, quiet: bool = False) -> None:
        """Write what is queued and stop the threads; raises the error of a failed commit unless ``quiet``
        (when another error is already on its way)."""
        if self._threads[0].is_alive():
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if not quiet:
            self.check()

    def _encode_loop(self) -> None:
        arena = Arena()
        while True:
            commit = self._queue.get()
            try:
                if commit is None:
                    self._encoded.put(None)
                    return
                if self._error is not None:  # after a failure nothing more is written
                    continue
                with self.clock.timing("write"):
                    try:  # the part hashes are left to the writing thread, which waits on the disk anyway
                        encoded: dict[str, EncodedPart] | BaseException = commit.encode(arena, hashed=False)
                    except BaseException as err:  # handed on: the writer stops at it, in order
                        encoded = err
                self._encoded.put((commit, encoded))
            finally:
                self._queue.task_done()

    def _write_loop(self) -> None:
        while True:
            item = self._encoded.get()
            try:
                if item is None:
                    return
                commit, encoded = item
                if self._error is not None:
                    continue
                if isinstance(encoded, BaseException):
                    raise encoded
                with self.clock.timing("write"):
                    commit.write(self.store, encoded)
            except BaseException as err:  # raised in the engine's thread
                self._error = err
            finally:
                self._encoded.task_done()
