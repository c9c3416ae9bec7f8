"""The batching engine: many documents streamed at once through an RWKV model in RNN mode.

Each batch row holds one document and its own recurrent state. Every step takes the next chunk of
every row, runs the rows whose chunks have the same length as one batch, and refills a row as soon
as its document ends. A row's results do not depend on its companions or on how its document was
cut into chunks beyond float32 rounding: rows never interact, though a BLAS may round a row's products
differently for other row counts (bitwise equal on many CPUs, see
``docstream.model.base.GEMM_ROW_MULTIPLE``).
"""
from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from docstream.corpus import Document, Rejected, TextStats
from docstream.corpus.chunk_id import ChunkId
from docstream.corpus.chunker import ResumeError, TokenChunk, iter_chunks
from docstream.model import Hidden, RWKVModel, State
from docstream.model.feed import forward_groups, on_cuda
from docstream.model.pooling import POOLINGS, pool
from docstream.stream.clock import StageClock
from docstream.stream.prefetch import Prefetcher


@dataclass(frozen=True)
class StreamTask:
    """A document to stream, from its start or from a snapshot (``state`` after ``start_token`` tokens)."""

    doc: Document
    start_token: int = 0
    state: State | None = None


@dataclass(frozen=True)
class ChunkRecord(ChunkId):
    """One processed chunk (its :class:`~docstream.corpus.chunk_id.ChunkId` fields first): its vectors
    (one per pooling of :mod:`docstream.model.pooling`), and the document's state when a snapshot is due
    (every ``snapshot_every`` chunks and at the document's end), and its token ids (int32), which the
    run stores so search can index each chunk's text without re-reading the corpus."""

    is_last: bool
    vectors: dict[str, np.ndarray]
    state: State | None
    tokens: np.ndarray | None = None


@dataclass(frozen=True)
class DocumentDone:
    doc_id: str
    source: str
    n_tokens: int
    n_chunks: int
    stats: TextStats


@dataclass
class _Row:
    task: StreamTask
    chunks: Iterator[TokenChunk]
    state: State | None  # None until the row joins the batch
    stats: TextStats = field(default_factory=TextStats)
    pending: TokenChunk | None = None
    #: (batch state, row) the state is a view of, so a step with the same rows in the same order
    #: passes the batch state on without gathering the rows again
    source: tuple[State, int] | None = None
    #: its document ended, or its next chunk cannot be read: it leaves the batch after this step
    leaving: bool = False
    #: rejected (non-finite results): what ran since is dropped
    dead: bool = False


@dataclass
class _Entry:
    """What a row's results need besides the tensors: the chunk that ran and the event closing the row."""

    chunk: TokenChunk | None = None
    closing: DocumentDone | Rejected | None = None


class _ModelClock:
    """Runs the forwards of a step and measures the model's busy time: CUDA events around each forward
    on a GPU (read once the step's results are collected, so nothing waits), wall time on a CPU."""

    def __init__(self, model: RWKVModel, clock: StageClock):
        self.model, self.clock = model, clock
        self.cuda = on_cuda(model)
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def forward(self, rows: list[_Row], states: State | list[State]) -> Iterator:
        batches = forward_groups(self.model, [row.pending.tokens for row in rows], states, hidden=True)
        while True:
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                batch = next(batches, None)
                end.record()
                self.events.append((start, end))
            else:
                began = time.perf_counter()
                batch = next(batches, None)
                self.clock.add("model", time.perf_counter() - began)
            if batch is None:
                return
            yield batch

    def settle(self) -> None:
        """Add the device time of the recorded forwards (their events have completed)."""
        for start, end in self.events:
            end.synchronize()
            self.clock.add("model", start.elapsed_time(end) / 1000)
        self.events.clear()


@dataclass
class _Flight:
    """One batch's results on their way to the host: pooled vectors [B, 3, C] fp32, a per-row flag of
    possibly non-finite outputs, and the states of the rows due for a snapshot."""

    rows: list[_Row]
    entries: list[_Entry]
    vectors: Tensor
    suspect: Tensor
    snapshots: dict[int, State]
    state: State
    model_clock: _ModelClock
    ready: torch.cuda.Event | None

    @classmethod
    def start(cls, rows: list[_Row], hidden: Hidden, snapshot_rows: list[int], model_clock: _ModelClock) -> _Flight:
        state = hidden.state
        with _small_ops(state.device):
            pooled = pool(hidden.last, state)
            vectors = torch.stack([pooled[name] for name in POOLINGS], dim=1)
            # a row's sum is NaN or inf when any of its values is (or, rarely, when finite values overflow
            # it: collect() then checks that row value by value): far cheaper than isfinite on every value
            parts = [vectors, *state.parts().values()]
            suspect = torch.stack([p.flatten(1).float().sum(dim=1) for p in parts], dim=1)
        if _copies_to_host(state.device):
            # gathered on the device, then copied as one block into pinned memory without waiting
            # (stacked from row views: an index tensor would be a host-to-device copy that waits)
            snap = (State.stack([state.select(j) for j in snapshot_rows]).to("cpu", non_blocking=True)
                    if snapshot_rows else None)
            snapshots = {j: snap.select(i) for i, j in enumerate(snapshot_rows)}
            vectors, suspect = vectors.to("cpu", non_blocking=True), suspect.to("cpu", non_blocking=True)
            ready = torch.cuda.Event() if state.device.type == "cuda" else None
            if ready is not None:
                ready.record()
        else:  # already on the host: views (states are values; nothing writes into them)
            snapshots = {j: state.select(j) for j in snapshot_rows}
            ready = None
        return cls(rows, [_Entry() for _ in rows], vectors, suspect, snapshots, state, model_clock, ready)

    def collect(self) -> tuple[np.ndarray, dict[int, list[str]], dict[int, State]]:
        """(vectors [B, 3, C] as numpy, {row: names of its non-finite outputs}, {row: snapshot state})."""
        if self.ready is not None:
            self.ready.synchronize()
        self.model_clock.settle()
        bad = {}
        suspects = (~torch.isfinite(self.suspect)).any(dim=1).nonzero().flatten().tolist()
        for j in suspects:
            parts = {f"{name} vector": self.vectors[j, k] for k, name in enumerate(POOLINGS)}
            parts.update({f"state {name}": t[j] for name, t in self.state.parts().items()})
            names = [name for name, t in parts.items() if not bool(torch.isfinite(t).all())]
            if names:
                bad[j] = names
        return self.vectors.numpy(), bad, self.snapshots


def _copies_to_host(device: torch.device) -> bool:
    """Whether a step's results live on a device apart from the host (and travel by non-blocking copies)."""
    return device.type != "cpu"


@contextmanager
def _small_ops(device: torch.device) -> Iterator[None]:
    """On a CPU, run the step's reductions (pooling, checks) on one thread: they take milliseconds, and
    while the background threads tokenize and write, splitting them across cores costs more in waiting
    for each other than it saves (6 ms on one thread against 40 ms on two, on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batch_state(rows: list[_Row]) -> State | list[State]:
    """The rows' states for the next forward: the batch state they are views of when they are exactly
    its rows in order (no copy), else one state per row (gathered by the forward)."""
    first = rows[0].source
    if first is not None and first[0].batch_size == len(rows) and all(
            row.source is not None and row.source[0] is first[0] and row.source[1] == i for i, row in enumerate(rows)):
        return first[0]
    return [row.state for row in rows]


class Stream:
    """Streams documents through ``model`` and yields :class:`ChunkRecord`, :class:`DocumentDone`
    and :class:`~docstream.corpus.Rejected` events, in a deterministic order.

    The stages overlap: documents are read and tokenized ``prefetch`` chunks ahead on a background
    thread (:mod:`docstream.stream.prefetch`), and a step's vectors and snapshots travel to the host
    (non-blocking copies on CUDA) while the next step runs, so the model runs back to back. ``clock``
    (a :class:`~docstream.stream.clock.StageClock`) collects where the time goes.
    """

    def __init__(self, model: RWKVModel, tokenizer, chunk_len: int = 1024, batch_size: int = 8,
                 snapshot_every: int = 4, prefetch: int = 4, clock: StageClock | None = None):
        for name, value in (("chunk_len", chunk_len), ("batch_size", batch_size), ("snapshot_every", snapshot_every),
                            ("prefetch", prefetch)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.model, self.tokenizer = model, tokenizer
        self.chunk_len, self.batch_size, self.snapshot_every = chunk_len, batch_size, snapshot_every
        self.prefetch = prefetch
        self.clock = clock or StageClock()

    def run(self, tasks: Iterable[StreamTask | Document | Rejected | str]
            ) -> Iterator[ChunkRecord | DocumentDone | Rejected]:
        """Stream ``tasks``: documents (:func:`~docstream.corpus.iter_corpus` yields them),
        snapshot resumptions (:class:`StreamTask`), rejections to pass on, or plain strings, each a
        document whose id is ``"doc-<i>"`` with ``i`` its position in ``tasks`` (from 0)."""
        if isinstance(tasks, str):
            raise ValueError(f"Stream.run takes an iterable of documents or texts, got one string "
                             f"({tasks[:40]!r}...); wrap it in a list: run([text])")
        prefetcher = Prefetcher(ahead=self.prefetch, clock=self.clock)
        try:
            yield from self._run(tasks, prefetcher)
        finally:
            prefetcher.close()

    def _run(self, tasks, prefetcher: Prefetcher) -> Iterator[ChunkRecord | DocumentDone | Rejected]:
        source = (_as_item(i, item) for i, item in enumerate(tasks))
        upcoming: deque[_Row] = deque()  # opened ahead of a free slot, so their first chunks are read early
        rows: list[_Row] = []
        flight: list[_Flight] = []  # the previous step's results, on their way to the host
        exhausted = False
        while True:
            # documents ahead of the batch: a free slot is refilled without waiting for a first chunk
            while len(upcoming) < self.batch_size and not exhausted:
                item = next(source, None)
                if item is None:
                    exhausted = True
                elif isinstance(item, Rejected):
                    yield item
                else:
                    upcoming.append(self._open(item, prefetcher))
            while len(rows) < self.batch_size and upcoming:
                row = upcoming.popleft()
                failure = self._advance(row)
                if failure is None and row.pending is None:
                    failure = Rejected(row.task.doc.doc_id, row.task.doc.source, "empty", "the document has no tokens")
                if failure is not None:
                    yield failure
                else:
                    if row.state is None:
                        row.state = self.model.init_state(1)
                    rows.append(row)
            if not rows and not flight and not upcoming and exhausted:
                return
            launched = self._launch(rows) if rows else []
            rows = [row for row in rows if not row.leaving]
            for results in flight:
                yield from self._finish(results)
            rows = [row for row in rows if not row.dead]
            flight = launched

    # -- internals -----------------------------------------------------------------------------
    def _open(self, task: StreamTask, prefetcher: Prefetcher) -> _Row:
        """A row for ``task`` whose chunks start being read now; its state is made when it joins the
        batch (a document waiting its turn holds no model state)."""
        row = _Row(task, iter(()), task.state)
        row.chunks = prefetcher.open(iter_chunks(task.doc, self.tokenizer, self.chunk_len, task.start_token,
                                                 row.stats))
        return row

    def _advance(self, row: _Row) -> Rejected | None:
        """Fetch the row's next chunk; a document that fails while being read becomes a rejection
        ("changed": it no longer reaches the token a resumed run's snapshot was taken at)."""
        doc = row.task.doc
        try:
            row.pending = next(row.chunks, None)
        except OSError as err:
            return Rejected(doc.doc_id, doc.source, "unreadable", f"{type(err).__name__}: {err}")
        except ResumeError as err:
            return Rejected(doc.doc_id, doc.source, "changed", str(err))
        return None

    def _launch(self, rows: list[_Row]) -> list[_Flight]:
        """Run every row's pending chunk (rows whose chunks have the same length as one batch) and start
        its results on their way to the host; then move each row on to its next chunk. A row whose
        document ends here, or whose next chunk cannot be read, is marked ``leaving``: its closing
        event goes with its results."""
        states = _batch_state(rows)
        launched = []
        model_clock = _ModelClock(self.model, self.clock)
        for batch in model_clock.forward(rows, states):
            members = [rows[i] for i in batch.rows]
            with self.clock.timing("vectors"):
                launched.append(_Flight.start(members, batch.hidden, self._snapshot_rows(members), model_clock))
            for j, row in enumerate(members):
                row.state, row.source = batch.hidden.state.select(j), (batch.hidden.state, j)
        for flight in launched:
            for row, entry in zip(flight.rows, flight.entries):
                entry.chunk = row.pending
                if row.pending.is_last:
                    entry.closing = DocumentDone(row.task.doc.doc_id, row.task.doc.source, row.pending.end,
                                                 row.pending.index + 1, row.stats)
                    row.leaving = True
                    continue
                entry.closing = self._advance(row)
                row.leaving = entry.closing is not None
        return launched

    def _snapshot_rows(self, rows: list[_Row]) -> list[int]:
        return [j for j, row in enumerate(rows)
                if row.pending.is_last or (row.pending.index + 1) % self.snapshot_every == 0]

    def _finish(self, flight: _Flight) -> Iterator[ChunkRecord | DocumentDone | Rejected]:
        """The events of one launched batch, once its results are on the host."""
        with self.clock.timing("vectors"):
            vectors, bad, states = flight.collect()
        for j, (row, entry) in enumerate(zip(flight.rows, flight.entries)):
            if row.dead:  # rejected at an earlier chunk: what ran since is dropped
                continue
            chunk, doc = entry.chunk, row.task.doc
            if bad.get(j):  # NaN/inf vectors would poison the index and the state every later chunk
                row.dead = True
                row.chunks.close()
                detail = _non_finite_detail(chunk, bad[j], flight.state.dtype)
                yield Rejected(doc.doc_id, doc.source, "non_finite", detail)
                continue
            snapshot = states.get(j)
            yield ChunkRecord(doc.doc_id, chunk.index, chunk.start, chunk.end, chunk.is_last,
                              {name: vectors[j, k] for k, name in enumerate(POOLINGS)}, snapshot,
                              np.asarray(chunk.tokens, np.int32))
            if entry.closing is not None:
                yield entry.closing


def _as_item(position: int, item: StreamTask | Document | Rejected | str) -> StreamTask | Rejected:
    """One input of :meth:`Stream.run` as a task (a text becomes document ``doc-<position>``)."""
    if isinstance(item, (StreamTask, Rejected)):
        return item
    if isinstance(item, Document):
        return StreamTask(item)
    if isinstance(item, str):
        return StreamTask(Document.from_text(f"doc-{position}", item))
    raise ValueError(f"Stream.run input {position} is a {type(item).__name__}; expected a str, a Document "
                     f"(Document.from_text(doc_id, text)), a StreamTask or a Rejected")


def _non_finite_detail(chunk: TokenChunk, names: list[str], dtype: torch.dtype) -> str:
    hint = ("an fp16 model overflowed: run it with dtype bf16 or fp32" if dtype == torch.float16
            else "the model's weights or this input drive it out of range")
    return (f"chunk {chunk.index} (tokens {chunk.start}-{chunk.end}) gave NaN or inf in "
            f"{', '.join(names)}; nothing from this chunk on is indexed ({hint})")
