"""The Ray actor of ``docstream run --engine ray``: one model, streaming the documents it is handed.

A worker only computes: it runs the local :class:`~docstream.stream.engine.Stream` over each group of
tasks it gets and yields the events back in packets. The driver alone writes the output store. This
module imports Ray, so only :mod:`docstream.stream.ray_engine` imports it, once Ray is known to be there.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray

from docstream.corpus import Rejected
from docstream.model import load_model
from docstream.model.formats.hf_files import checkpoint_fingerprint
from docstream.stream.engine import ChunkRecord, DocumentDone, Stream, StreamTask
from docstream.tokenizer import load_tokenizer

#: packets a worker may have produced ahead of the driver before it pauses (bounds the object store)
PACKETS_AHEAD = 8

Event = ChunkRecord | DocumentDone | Rejected


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads, and the fingerprints the driver's run was checked against."""

    model: Path
    tokenizer: Path
    device: str
    dtype: str
    backend: str
    chunk_len: int
    batch_size: int
    snapshot_every: int
    model_fingerprint: str
    tokenizer_fingerprint: str
    workdir: Path  # the driver's working directory, which relative document paths start from


@dataclass(frozen=True)
class WorkerInfo:
    pid: int
    host: str


class DocumentWorker:
    """Holds one model and streams groups of tasks through it (wrapped with ``ray.remote`` by the driver)."""

    def __init__(self, spec: WorkerSpec):
        if spec.workdir.is_dir():
            os.chdir(spec.workdir)
        tokenizer = load_tokenizer(spec.tokenizer)
        host = socket.gethostname()
        # every node must read the very files the driver fingerprinted, or results would differ
        _check_same_file("model checkpoint", spec.model, checkpoint_fingerprint(spec.model), spec.model_fingerprint,
                         host)
        _check_same_file("tokenizer file", spec.tokenizer, tokenizer.fingerprint(), spec.tokenizer_fingerprint, host)
        # Ray hands each worker its own GPU as device 0
        device = "cuda" if spec.device.startswith("cuda") else spec.device
        model = load_model(spec.model, device=device, dtype=spec.dtype, backend=spec.backend)
        self.stream = Stream(model, tokenizer, spec.chunk_len, spec.batch_size, spec.snapshot_every)
        self.packet_chunks = spec.batch_size
        self.info = WorkerInfo(os.getpid(), host)

    def ready(self) -> WorkerInfo:
        """Answers once the model is loaded."""
        return self.info

    @ray.method(num_returns="streaming", _generator_backpressure_num_objects=PACKETS_AHEAD)
    def stream_tasks(self, tasks: list[StreamTask]) -> Iterator[list[Event]]:
        """The events of ``tasks``, in packets of about one engine step each.

        A packet never ends right after a document's last chunk: that chunk's ``DocumentDone`` is in
        the same packet, so the driver can commit between any two packets.
        """
        packet: list[Event] = []
        chunks = 0
        for event in self.stream.run(tasks):
            packet.append(event)
            if isinstance(event, ChunkRecord):
                chunks += 1
                if event.is_last:
                    continue
            if chunks >= self.packet_chunks:
                yield packet
                packet, chunks = [], 0
        if packet:
            yield packet


def _check_same_file(what: str, path: Path, seen: str, want: str, host: str) -> None:
    if seen != want:
        raise ValueError(f"{what} {str(path)!r} on host {host} differs from the driver's (fingerprint "
                         f"{seen[:12]}…, the driver's {want[:12]}…); every Ray node must see the same file")
