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

#: the stages, in the order they are reported:
#: read+tokenize: reading and tokenizing documents (background thread, ahead of the model);
#: model: the forward passes (device time from CUDA events on a GPU, wall time on a CPU);
#: vectors: pooling, the non-finite check and the device-to-host copies of vectors and snapshots;
#: write: serializing, hashing and writing committed parts and records (background threads);
#: waited for tokens / for the writer: the model's thread held back by the tokenizer / a full commit queue
STAGES = ("read+tokenize", "model", "vectors", "write", "waited for tokens", "waited for the writer")


class StageClock:
    """Seconds spent per stage; safe to add to from several threads."""

    def __init__(self) -> None:
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()

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

    def totals(self) -> dict[str, float]:
        """Seconds per stage, known stages first in :data:`STAGES` order (absent ones as 0)."""
        with self._lock:
            spent = dict(self._spent)
        ordered = {stage: spent.pop(stage, 0.0) for stage in STAGES}
        ordered.update(spent)
        return ordered

    def model_busy(self, wall: float) -> float:
        """The fraction of ``wall`` seconds the model was busy."""
        return min(1.0, self.totals()["model"] / wall) if wall > 0 else 0.0
