"""The batching engine: many documents streamed at once through an RWKV model in RNN mode.

Each batch row holds one document and its own recurrent state. Every step takes the next chunk of
every row, runs the rows whose chunks have the same length as one batch, and refills a row as soon
as its document ends. A row's results do not depend on its companions or on how its document was
cut into chunks beyond float32 rounding: rows never interact, though a BLAS may round a row's products
differently for other row counts (bitwise equal on many CPUs, see
``docstream.model.base.GEMM_ROW_MULTIPLE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from docstream.corpus import Document, Rejected, TextStats
from docstream.corpus.chunk_id import ChunkId
from docstream.corpus.chunker import ResumeError, TokenChunk, iter_chunks
from docstream.model import Hidden, RWKVModel, State
from docstream.model.feed import forward_groups
from docstream.model.pooling import pool


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
    (every ``snapshot_every`` chunks and at the document's end)."""

    is_last: bool
    vectors: dict[str, np.ndarray]
    state: State | None


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
    state: State
    stats: TextStats = field(default_factory=TextStats)
    pending: TokenChunk | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    #: names of the outputs of the last forward that hold NaN or inf (empty when all are finite)
    non_finite: list[str] = field(default_factory=list)


class Stream:
    """Streams documents through ``model`` and yields :class:`ChunkRecord`, :class:`DocumentDone`
    and :class:`~docstream.corpus.Rejected` events, in a deterministic order."""

    def __init__(self, model: RWKVModel, tokenizer, chunk_len: int = 1024, batch_size: int = 8,
                 snapshot_every: int = 4):
        for name, value in (("chunk_len", chunk_len), ("batch_size", batch_size), ("snapshot_every", snapshot_every)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.model, self.tokenizer = model, tokenizer
        self.chunk_len, self.batch_size, self.snapshot_every = chunk_len, batch_size, snapshot_every

    def run(self, tasks: Iterable[StreamTask | Document | Rejected | str]
            ) -> Iterator[ChunkRecord | DocumentDone | Rejected]:
        """Stream ``tasks``: documents (:func:`~docstream.corpus.iter_corpus` yields them),
        snapshot resumptions (:class:`StreamTask`), rejections to pass on, or plain strings, each a
        document whose id is ``"doc-<i>"`` with ``i`` its position in ``tasks`` (from 0)."""
        if isinstance(tasks, str):
            raise ValueError(f"Stream.run takes an iterable of documents or texts, got one string "
                             f"({tasks[:40]!r}...); wrap it in a list: run([text])")
        rows: list[_Row] = []
        source = (_as_item(i, item) for i, item in enumerate(tasks))
        exhausted = False
        while True:
            while len(rows) < self.batch_size and not exhausted:
                item = next(source, None)
                if item is None:
                    exhausted = True
                elif isinstance(item, Rejected):
                    yield item
                else:
                    row, event = self._open(item)
                    if event is not None:
                        yield event
                    if row is not None:
                        rows.append(row)
            if not rows:
                return
            self._step(rows)
            survivors = []
            for row in rows:
                done = yield from self._emit(row)
                if not done:
                    survivors.append(row)
            rows = survivors

    # -- internals -----------------------------------------------------------------------------
    def _open(self, task: StreamTask) -> tuple[_Row | None, Rejected | None]:
        state = task.state if task.state is not None else self.model.init_state(1)
        row = _Row(task, iter(()), state)
        row.chunks = iter_chunks(task.doc, self.tokenizer, self.chunk_len, task.start_token, row.stats)
        failure = self._advance(row)
        if failure is not None:
            return None, failure
        if row.pending is None:
            return None, Rejected(task.doc.doc_id, task.doc.source, "empty", "the document has no tokens")
        return row, None

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

    def _step(self, rows: list[_Row]) -> None:
        """Run every row's pending chunk, batching rows whose chunks have the same length."""
        for batch in forward_groups(self.model, [row.pending.tokens for row in rows], [row.state for row in rows],
                                    hidden=True):
            self._commit([rows[i] for i in batch.rows], batch.hidden)

    def _commit(self, batch: list[_Row], hidden: Hidden) -> None:
        """Keep each row's new state, its pooled vectors and which of them are not finite."""
        # copies: a view would keep the whole [B, T, C] hidden tensor alive while its row waits to commit
        pooled_t = pool(hidden.last, hidden.state)
        bad = _non_finite_rows(pooled_t, hidden.state)
        pooled = {name: v.cpu().numpy().copy() for name, v in pooled_t.items()}
        for i, row in enumerate(batch):
            row.state = hidden.state.select(i)
            row.vectors = {name: v[i] for name, v in pooled.items()}
            row.non_finite = bad.get(i, [])

    def _emit(self, row: _Row):
        """Yield the events of the chunk the row just ran; return True when its document is done."""
        chunk, doc = row.pending, row.task.doc
        if row.non_finite:  # NaN/inf vectors would poison the index and the state every later chunk
            yield Rejected(doc.doc_id, doc.source, "non_finite", _non_finite_detail(chunk, row))
            return True
        snapshot = chunk.is_last or (chunk.index + 1) % self.snapshot_every == 0
        yield ChunkRecord(doc.doc_id, chunk.index, chunk.start, chunk.end, chunk.is_last, row.vectors,
                          row.state.to("cpu") if snapshot else None)
        if chunk.is_last:
            yield DocumentDone(doc.doc_id, doc.source, chunk.end, chunk.index + 1, row.stats)
            return True
        failure = self._advance(row)
        if failure is not None:
            yield failure
            return True
        return False


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


def _non_finite_rows(pooled: dict[str, torch.Tensor], state: State) -> dict[int, list[str]]:
    """``{row: names of its vectors / state parts holding NaN or inf}`` for the rows that have any."""
    parts = {f"{name} vector": v for name, v in pooled.items()}
    parts.update({f"state {name}": t for name, t in state.parts().items()})
    # [B, names]: one flag per row and output, computed where the tensors are (one transfer)
    flags = torch.stack([~torch.isfinite(t.flatten(1)).all(dim=1) for t in parts.values()], dim=1).cpu()
    names = list(parts)
    return {i: [names[j] for j in row.nonzero().flatten().tolist()]
            for i, row in enumerate(flags) if bool(row.any())}


def _non_finite_detail(chunk: TokenChunk, row: _Row) -> str:
    hint = ("an fp16 model overflowed: run it with dtype bf16 or fp32" if row.state.dtype == torch.float16
            else "the model's weights or this input drive it out of range")
    return (f"chunk {chunk.index} (tokens {chunk.start}-{chunk.end}) gave NaN or inf in "
            f"{', '.join(row.non_finite)}; nothing from this chunk on is indexed ({hint})")
