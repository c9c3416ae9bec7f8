"""Reading and tokenizing ahead of the model, on a background thread.

Each document's chunk iterator (:func:`~docstream.corpus.chunker.iter_chunks`, which reads the
document and tokenizes it) is advanced on a worker thread up to ``ahead`` chunks before the engine
asks for them, so the model does not wait for the tokenizer. Memory stays flat: at most ``ahead``
chunks per open document are held. An error raised while reading (an unreadable file, a document
that changed under a resume) is raised to the engine at the chunk where it happened, exactly as the
plain iterator would raise it.

A compiled tokenizer that releases the GIL tokenizes truly beside the model; a pure-Python one still
overlaps with the model's compiled kernels, which release the GIL while they run.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from docstream.stream.clock import StageClock

T = TypeVar("T")


class Prefetcher:
    """Runs the prefetching of every document opened through :meth:`open` on ``threads`` threads."""

    def __init__(self, threads: int = 1, ahead: int = 4, clock: StageClock | None = None):
        if threads < 1 or ahead < 1:
            raise ValueError(f"threads and ahead must be at least 1, got threads={threads}, ahead={ahead}")
        self.ahead, self.clock = ahead, clock or StageClock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="docstream-tokenize")
        self._open: set[Prefetched] = set()

    def open(self, source: Iterator[T]) -> Prefetched[T]:
        """``source`` read ahead in the background (starting now)."""
        feed = Prefetched(self, source)
        self._open.add(feed)
        feed._schedule()
        return feed

    def close(self) -> None:
        """Stop all reading ahead and the threads (what is in progress finishes its current chunk)."""
        for feed in list(self._open):
            feed.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Prefetched(Generic[T]):
    """An iterator over ``source``'s items, produced ahead by a :class:`Prefetcher`'s thread.

    ``source`` is only ever advanced by one thread at a time.
    """

    def __init__(self, owner: Prefetcher, source: Iterator[T]):
        self._owner, self._source = owner, source
        self._ready: deque[T] = deque()
        self._cond = threading.Condition()
        self._running = False  # a fill job is scheduled or running
        self._done = False  # the source is exhausted, failed, or the feed was closed
        self._error: BaseException | None = None

    def __iter__(self) -> Prefetched[T]:
        return self

    def __next__(self) -> T:
        with self._cond:
            if not self._ready and not self._done:
                with self._owner.clock.timing("waited for tokens"):
                    while not self._ready and not self._done:
                        self._cond.wait()
            if self._ready:
                item = self._ready.popleft()
                if not self._running and not self._done:
                    self._schedule_locked()
                return item
            self._owner._open.discard(self)
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration

    def close(self) -> None:
        """Stop reading ahead; the items not taken are dropped."""
        with self._cond:
            self._done = True
            self._ready.clear()
            self._cond.notify_all()
        self._owner._open.discard(self)

    def _schedule(self) -> None:
        with self._cond:
            self._schedule_locked()

    def _schedule_locked(self) -> None:
        self._running = True
        try:
            self._owner._pool.submit(self._fill)
        except RuntimeError:  # the prefetcher was closed: nothing more is read
            self._running, self._done = False, True
            self._cond.notify_all()

    def _fill(self) -> None:
        """Advance the source until ``ahead`` items wait, the source ends, or it raises."""
        clock = self._owner.clock
        while True:
            with self._cond:
                if self._done or len(self._ready) >= self._owner.ahead:
                    self._running = False
                    return
            try:
                with clock.timing("read+tokenize"):
                    item = next(self._source)
            except StopIteration:
                self._finish(None)
                return
            except BaseException as err:  # raised to the consumer at this position
                self._finish(err)
                return
            with self._cond:
                if not self._done:
                    self._ready.append(item)
                    self._cond.notify_all()

    def _finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._running, self._done, self._error = False, True, error
            self._cond.notify_all()
