"""``docstream run --engine ray``: documents sharded across Ray actors, outputs committed by the driver.

Each worker is a Ray actor holding one model (:class:`~docstream.stream.ray_worker.DocumentWorker`,
one GPU each when the run's device is cuda). The driver reads the corpus, hands each worker groups of
documents, and takes the events back as a stream of packets; it stays the only writer of the output
store, so commits, resume and the exactly-once guarantee are those of the local engine.

When a worker dies (its process killed, its node lost), the driver commits every packet it has
received, forgets the uncommitted rows of that worker's unfinished documents, starts a new worker
in its place and hands it those documents again, each from its last committed snapshot. When the
driver dies, its workers die with it and re-running the command resumes from the committed records,
as after a local run. A document's outputs depend on which documents shared its batch only through
float32 rounding, so the outputs hold the local engine's rows, with values equal to that rounding.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from docstream.corpus import Document, Rejected
from docstream.store.config import RunConfig
from docstream.stream.engine import ChunkRecord, DocumentDone, StreamTask

if TYPE_CHECKING:
    from docstream.stream.ray_worker import WorkerInfo

log = logging.getLogger(__name__)

#: a worker gets documents in groups of this many batches (a group's last steps run part-full batches)
GROUP_BATCHES = 2
#: groups handed to a worker at once, so it starts the next one without waiting for the driver
GROUPS_AHEAD = 2
#: replacements of dead workers a run allows, per worker, before it gives up
RESTARTS_PER_WORKER = 3
#: seconds the workers may take to start (load their model) before the run gives up
STARTUP_TIMEOUT_S = 600.0

INSTALL_HINT = "pip install docstream[ray]"


class RayUnavailableError(ImportError):
    """``--engine ray`` was asked for but the ray package is not installed."""


class WorkerFailedError(RuntimeError):
    """Ray workers could not start, or kept dying."""


class EventSink(Protocol):
    """Where the engine delivers events (``docstream.stream.run`` commits them)."""

    def add(self, event: ChunkRecord | DocumentDone | Rejected) -> None: ...

    def worker_lost(self, docs: list[Document]) -> list[StreamTask]: ...


def require_ray(address: str | None = None) -> Any:
    """The ``ray`` module, imported for a run on ``address`` (None: a local instance).

    Raises:
        RayUnavailableError: ray is not installed; the message says what to install.
    """
    if address is None or _is_loopback(address):
        # Ray advertises a node by the machine's outward address, even when told 127.0.0.1, unless
        # this is off; a local instance serves only this machine, so it stays on loopback. Ray reads
        # the variable when it is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError(f"engine 'ray' needs the ray package, which is not installed here: "
                                  f"{INSTALL_HINT}") from err
    return ray


def stream_on_ray(config: RunConfig, tasks: Iterable[StreamTask | Rejected], sink: EventSink,
                  model_fingerprint: str, tokenizer_fingerprint: str) -> None:
    """Stream ``tasks`` on Ray workers and deliver their events to ``sink``.

    Joins the cluster at ``config.address`` (``"auto"``: the one ``ray start`` made on this machine
    or the one ``RAY_ADDRESS`` names), or starts a local instance when there is none, stopped again at
    the end. A process that has already called ``ray.init`` keeps its connection.
    """
    ray = require_ray(config.address)
    started = _connect(ray, config)
    try:
        _check_resources(ray, config)
        RayEngine(ray, config, sink, model_fingerprint, tokenizer_fingerprint).run(tasks)
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, config: RunConfig) -> bool:
    """Connect to Ray; True when this call started a Ray instance."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if config.address is not None:
        ray.init(address=config.address, **quiet)
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=config.ray_workers, include_dashboard=False, **quiet)
    return True


def _worker_resources(config: RunConfig) -> dict[str, float]:
    return {"CPU": 1.0, "GPU": 1.0 if config.device.startswith("cuda") else 0.0}


def _check_resources(ray: Any, config: RunConfig) -> None:
    have = ray.cluster_resources()
    n = config.ray_workers
    need = {name: amount * n for name, amount in _worker_resources(config).items() if amount}
    short = [f"{need[name]:g} {name}s (it has {have.get(name, 0):g})" for name in need
             if have.get(name, 0) < need[name]]
    if short:
        raise ValueError(f"workers={n}: the Ray cluster cannot hold {n} workers, which need "
                         f"{' and '.join(short)}; lower --workers or add nodes")


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Group:
    """Tasks handed to a worker in one call: their event stream, and the documents not yet done."""

    stream: Any  # ray.ObjectRefGenerator
    open: dict[str, Document]


@dataclass
class _Worker:
    slot: int
    actor: Any  # ray.actor.ActorHandle
    info: WorkerInfo
    groups: deque[_Group] = field(default_factory=deque)


class RayEngine:
    """The driver's side: keeps every worker supplied with groups of tasks, delivers the packets
    they stream back, and replaces a worker that dies."""

    def __init__(self, ray: Any, config: RunConfig, sink: EventSink, model_fingerprint: str,
                 tokenizer_fingerprint: str):
        from docstream.stream.ray_worker import DocumentWorker, WorkerSpec

        self.ray, self.config, self.sink = ray, config, sink
        resources = _worker_resources(config)
        self.actor_class = ray.remote(DocumentWorker).options(
            num_cpus=resources["CPU"], num_gpus=resources["GPU"], max_restarts=0)
        # workers may start in another directory: they get absolute paths, and the driver's directory
        # for relative document paths
        self.spec = WorkerSpec(model=Path(config.model).resolve(), tokenizer=Path(config.tokenizer).resolve(),
                               device=config.device, dtype=config.dtype, backend=config.backend,
                               chunk_len=config.chunk_len, batch_size=config.batch_size,
                               snapshot_every=config.snapshot_every, model_fingerprint=model_fingerprint,
                               tokenizer_fingerprint=tokenizer_fingerprint, workdir=Path.cwd())
        self.group_size = GROUP_BATCHES * config.batch_size
        self.restart_budget = RESTARTS_PER_WORKER * config.ray_workers
        self.restarts = 0
        self.pending: deque[StreamTask] = deque()  # documents taken back from dead workers go first
        self.source: Iterator[StreamTask | Rejected] = iter(())
        self.workers: list[_Worker] = []

    def run(self, tasks: Iterable[StreamTask | Rejected]) -> None:
        self.source = iter(tasks)
        try:
            self.workers = [_Worker(slot, actor, info)
                            for slot, (actor, info) in enumerate(self._launch(self.config.ray_workers))]
            for worker in self.workers:
                self._supply(worker)
            while True:
                streams = {group.stream: worker for worker in self.workers for group in worker.groups}
                if not streams:
                    return
                waiting = list(streams)
                self.ray.wait(waiting, num_returns=1)
                # one packet from every stream that has one, so no worker waits behind a faster one
                ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)
                for stream in ready:
                    worker = streams[stream]
                    if any(group.stream is stream for group in worker.groups):  # not retired meanwhile
                        self._receive(worker, stream)
        finally:
            for worker in self.workers:
                self.ray.kill(worker.actor)

    # -- workers -------------------------------------------------------------------------------
    def _launch(self, n: int) -> list[tuple[Any, WorkerInfo]]:
        """``n`` new workers, once they have loaded their model."""
        ray = self.ray
        actors = [self.actor_class.remote(self.spec) for _ in range(n)]
        try:
            infos = ray.get([actor.ready.remote() for actor in actors], timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as err:
            for actor in actors:
                ray.kill(actor)
            raise WorkerFailedError(f"Ray workers did not start within {STARTUP_TIMEOUT_S:.0f} s; check that "
                                    f"the cluster can place them (ray status)") from err
        except ray.exceptions.RayActorError as err:
            raise WorkerFailedError(f"a Ray worker could not start: {err}") from err
        return list(zip(actors, infos))

    def _replace(self, worker: _Worker, err: Exception) -> None:
        """Give the documents of a dead ``worker`` to a new worker, each from its last commit."""
        self.restarts += 1
        if self.restarts > self.restart_budget:
            raise WorkerFailedError(f"Ray workers died {self.restarts} times, more than this run allows "
                                    f"({RESTARTS_PER_WORKER} per worker); the last: {err}") from err
        self.ray.kill(worker.actor)  # it may be only unreachable: make sure it computes no more
        docs = [doc for group in worker.groups for doc in group.open.values()]
        worker.groups.clear()
        self.pending.extendleft(reversed(self.sink.worker_lost(docs)))
        log.warning("Ray worker %d (pid %d on %s) died; a new worker takes over its %d unfinished documents "
                    "from their last committed snapshots (%s)", worker.slot, worker.info.pid, worker.info.host,
                    len(docs), type(err).__name__)
        [(worker.actor, worker.info)] = self._launch(1)
        self._supply(worker)

    # -- work ----------------------------------------------------------------------------------
    def _supply(self, worker: _Worker) -> None:
        """Hand ``worker`` groups until it holds :data:`GROUPS_AHEAD` (or the corpus is used up)."""
        while len(worker.groups) < GROUPS_AHEAD:
            tasks = self._take(self.group_size)
            if not tasks:
                return
            stream = worker.actor.stream_tasks.remote(tasks)
            worker.groups.append(_Group(stream, {task.doc.doc_id: task.doc for task in tasks}))

    def _take(self, n: int) -> list[StreamTask]:
        """Up to ``n`` tasks; corpus rejections met on the way go straight to the sink."""
        tasks: list[StreamTask] = []
        while len(tasks) < n:
            if self.pending:
                tasks.append(self.pending.popleft())
                continue
            item = next(self.source, None)
            if item is None:
                break
            if isinstance(item, Rejected):
                self.sink.add(item)
            else:
                tasks.append(item)
        return tasks

    def _receive(self, worker: _Worker, stream: Any) -> None:
        """Deliver the next packet of ``stream``, or retire the stream if it has ended."""
        ray = self.ray
        group = next(g for g in worker.groups if g.stream is stream)
        try:
            packet = ray.get(next(stream))
        except StopIteration:
            assert not group.open, f"a worker's stream ended with documents unfinished: {sorted(group.open)}"
            worker.groups.remove(group)
            self._supply(worker)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
            if getattr(err, "actor_init_failed", False):
                raise WorkerFailedError(f"a Ray worker could not start: {err}") from err
            self._replace(worker, err)
            return
        self._on_packet(worker, group, packet)

    def _on_packet(self, worker: _Worker, group: _Group, packet: list[ChunkRecord | DocumentDone | Rejected]) -> None:
        for event in packet:
            if isinstance(event, (DocumentDone, Rejected)):
                group.open.pop(event.doc_id, None)
            self.sink.add(event)
