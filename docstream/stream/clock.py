"""Where a run's time goes: seconds per pipeline stage, added from any thread.

The stages of ``docstream run`` overlap (tokenizing and writing run beside the model), so their
seconds do not add up to the wall time; what tells whether a job is model-bound is the share of the
wall time the model was busy, :attr:`StageClock.model_busy`.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

#: the stages, in the order they are reported
STAGES = ("read+tokenize", "model", "vectors", "write", "waited for tokens", "waited for the writer")
#: one line of explanation per stage, for ``--help``-like output and the README
MEANINGS = {
    "read+tokenize": "reading and tokenizing documents (background thread, ahead of the model)",
    "model": "the forward passes (device time on CUDA, measured with events; wall time on CPU)",
    "vectors": "pooling, the non-finite check and device-to-host copies of vectors and snapshots",
    "write": "serializing, hashing and writing committed parts and records (background thread)",
    "waited for tokens": "the model thread waiting for the tokenizer (the job is read/tokenize-bound)",
    "waited for the writer": "the model thread waiting for a full commit queue (the job is write-bound)",
}


class StageClock:
    """Seconds spent per stage since the clock was made; safe to add to from several threads."""

    def __init__(self) -> None:
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()
        self.start = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._spent[stage] = self._spent.get(stage, 0.0) + seconds

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def totals(self) -> dict[str, float]:
        """Seconds per stage, known stages first in :data:`STAGES` order (absent ones as 0)."""
        with self._lock:
            spent = dict(self._spent)
        ordered = {stage: spent.pop(stage, 0.0) for stage in STAGES}
        ordered.update(spent)
        return ordered

    def model_busy(self, wall: float | None = None) -> float:
        """The fraction of the wall time (since the clock was made, or ``wall``) the model was busy."""
        wall = self.elapsed() if wall is None else wall
        return min(1.0, self.totals()["model"] / wall) if wall > 0 else 0.0
