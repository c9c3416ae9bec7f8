"""Feeding tokens through a model: the one place that batches rows and cuts long sequences into chunks.

* :func:`forward_groups`: one forward per group of rows of equal length, each row from its own state
  (the batching engine, prompts, teacher forcing).
* :func:`feed_rows`: rows of any lengths, ``chunk_len`` tokens per row and step, the rows whose
  chunks have the same length batched, every row's state carried from chunk to chunk.
* :func:`feed_chunks` / :func:`feed_sequence`: one sequence chunk by chunk, the state carried, so
  memory is bounded by one chunk whatever the sequence's length.

Rows are grouped by length in the order they are given (the first row of a length opens its group),
and a sequence is cut into consecutive ``chunk_len`` slices. A row's results do not depend on its
companions beyond float32 rounding (see ``docstream.model.base.GEMM_ROW_MULTIPLE``); feeding in other
chunks agrees with feeding whole to float32 rounding too.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from docstream.model.base import Hidden, RWKVModel, check_token_range, tokens_checked
from docstream.model.state import State

#: what a feed returns besides the states: nothing, the logits after the last token, or after every token
LOGITS = (None, "last", "all")


@dataclass(frozen=True)
class Batch:
    """One forward: ``rows`` (positions in the caller's list) fed together as ``tokens`` [B, T].

    ``state``: their states after it [B]; ``logits``: fp32 [B, V] (``"last"``) or [B, T, V] (``"all"``),
    None when not asked for; ``hidden``: the hidden states, when asked for (then no logits).
    """

    rows: list[int]
    tokens: Tensor
    state: State
    logits: Tensor | None = None
    hidden: Hidden | None = None


@dataclass(frozen=True)
class Fed:
    """One row after its tokens: its state [1] and its fp32 logits, [V] (``"last"``) or [T, V]
    (``"all"``, T the tokens fed), or None."""

    state: State
    logits: Tensor | None = None


def forward_groups(model: RWKVModel, rows: Sequence[Sequence[int]], states: State | Sequence[State],
                   logits: str | None = None, hidden: bool = False) -> Iterator[Batch]:
    """Run every row of ``rows`` (non-empty token lists or arrays) from its state, rows of equal
    length as one batched forward; one :class:`Batch` per group, groups in order of first appearance.

    ``states``: one state per row, as a list of one-row states or one state of ``len(rows)`` rows.
    ``logits``: one of :data:`LOGITS`; ``hidden=True`` returns the hidden states instead (for pooling).
    """
    _check_logits(logits)
    count = states.batch_size if isinstance(states, State) else len(states)
    if count != len(rows):
        raise ValueError(f"got {len(rows)} token rows and {count} states; pass one state per row")
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"token row {i} is empty; every row needs at least one token")
        groups.setdefault(len(row), []).append(i)
    for members in groups.values():
        ids = np.stack([np.asarray(rows[i], dtype=np.int64) for i in members])
        # checked here, on the host: the model's own check would wait for the device's queued work
        check_token_range(int(ids.min()), int(ids.max()), model.config.vocab_size)
        tokens = torch.from_numpy(ids)
        if on_cuda(model):  # pinned and non-blocking: the host does not wait for the work already queued
            tokens = tokens.pin_memory().to(model.device, non_blocking=True)
        state = _gather(states, members)
        with tokens_checked():  # left before the yield: the caller's own forwards check their ids
            if hidden:
                out = model.forward_hidden(tokens, state)
                batch = Batch(members, tokens, out.state, hidden=out)
            else:
                # the last position's logits cost one head product per row; computed even when unused
                out, new = model.forward(tokens, state, all_logits=logits == "all")
                batch = Batch(members, tokens, new, out if logits else None)
        yield batch


def feed_rows(model: RWKVModel, rows: Sequence[Sequence[int]], states: State | Sequence[State],
              chunk_len: int | None = None, logits: str | None = None,
              on_batch: Callable[[Batch], None] | None = None) -> list[Fed]:
    """Each row after its tokens, in row order: every step feeds the next ``chunk_len`` tokens of
    every unfinished row (None: whole rows), through :func:`forward_groups`.

    ``rows`` may be anything sliceable with ``row[a:b]`` giving a token list or array. ``on_batch``
    sees every forward (to count tokens). With ``logits="all"`` a row's logits of every chunk are
    concatenated ([T, V]: memory grows with the rows; use it for short rows).
    """
    _check_logits(logits)
    if chunk_len is not None and chunk_len < 1:
        raise ValueError(f"chunk_len must be at least 1 (or None for whole rows), got {chunk_len}")
    empty = [i for i, row in enumerate(rows) if len(row) == 0]
    if empty:
        raise ValueError(f"token rows {empty} are empty; every row needs at least one token")
    if not rows:
        return []
    done = [0] * len(rows)
    # the caller's states (one batched State or a list) until the first step, in which every row
    # takes part and forward_groups picks them; from then on one state per row
    current: State | list[State] = states
    pieces: list[list[Tensor]] = [[] for _ in rows]
    while True:
        takes = [min(chunk_len or len(row), len(row) - at) for row, at in zip(rows, done)]
        active = [i for i, take in enumerate(takes) if take]
        if not active:
            break
        chunks = [rows[i][done[i]:done[i] + takes[i]] for i in active]
        step_states = current if len(active) == len(rows) else [current[i] for i in active]
        new_states: list[State] = list(current) if isinstance(current, list) else [None] * len(rows)
        for batch in forward_groups(model, chunks, step_states, logits):
            if on_batch is not None:
                on_batch(batch)
            for j, k in enumerate(batch.rows):
                i = active[k]
                new_states[i], done[i] = batch.state.select(j), done[i] + takes[i]
                if batch.logits is not None:
                    pieces[i].append(batch.logits[j])
        current = new_states
    return [Fed(state, _join(p, logits)) for state, p in zip(current, pieces)]


def feed_chunks(model: RWKVModel, chunks: Iterable[Any], state: State | None = None,
                logits: str | None = None) -> Iterator[tuple[Any, Fed]]:
    """Feed one sequence chunk by chunk from ``state`` (None: the initial state), the state carried:
    yields ``(chunk, Fed)`` after each chunk, the logits of that chunk only.

    A chunk is a non-empty token list or array, or an object with such ``tokens`` (a
    :class:`~docstream.corpus.TokenChunk`); chunks are taken from ``chunks`` one at a time.
    """
    _check_logits(logits)
    for chunk in chunks:
        tokens = getattr(chunk, "tokens", chunk)
        if len(tokens) == 0:
            raise ValueError("feed_chunks got an empty chunk; every chunk needs at least one token")
        batch = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
        out, state = model.forward(batch, state, all_logits=logits == "all")
        yield chunk, Fed(state, out[0] if logits else None)


def feed_sequence(model: RWKVModel, tokens: Sequence[int], state: State | None = None, chunk_len: int = 1024,
                  logits: str | None = None) -> Iterator[tuple[int, Fed]]:
    """:func:`feed_chunks` over consecutive ``chunk_len`` slices of ``tokens`` (a list, array or 1-D
    tensor): yields ``(start, Fed)``, ``start`` the offset of the chunk just fed."""
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be at least 1, got {chunk_len}")
    starts = range(0, len(tokens), chunk_len)
    slices = (tokens[start:start + chunk_len] for start in starts)
    for start, (_, fed) in zip(starts, feed_chunks(model, slices, state, logits)):
        yield start, fed


def last_state(fed: Iterable[tuple[Any, Fed]], state: State | None = None) -> State | None:
    """The state after the last chunk of a :func:`feed_chunks` / :func:`feed_sequence` feed
    (``state`` when it fed nothing)."""
    for _, step in fed:
        state = step.state
    return state


def on_cuda(model: Any) -> bool:
    """Whether ``model`` runs on a CUDA device (False for stand-ins that have no device)."""
    device = getattr(model, "device", None)
    return isinstance(device, torch.device) and device.type == "cuda"


def _gather(states: State | Sequence[State], members: list[int]) -> State:
    """The states of ``members`` as one batched state (one row's own state when alone)."""
    if isinstance(states, State):
        if members == list(range(members[0], members[-1] + 1)):  # consecutive rows: a view, no copy
            return states if len(members) == states.batch_size else states.select(slice(members[0], members[-1] + 1))
        # concatenating row views copies each row once (indexing with a list is slower on a CPU)
        return State.stack([states.select(i) for i in members])
    return states[members[0]] if len(members) == 1 else State.stack([states[i] for i in members])


def _join(pieces: list[Tensor], logits: str | None) -> Tensor | None:
    if not logits:
        return None
    return pieces[-1] if logits == "last" else torch.cat(pieces)


def _check_logits(logits: str | None) -> None:
    if logits not in LOGITS:
        raise ValueError(f"logits must be one of {LOGITS}, got {logits!r}")
