"""``docstream run``: a corpus streamed into an output directory, resumable after any interruption.

The run skips documents a committed record marks finished, continues unfinished ones from their last
committed snapshot, and commits outputs in batches. Embedding rows are held back until a snapshot of
their document at or after them is in the same commit, so a resumed run recomputes exactly the
chunks that were never committed: nothing is lost and nothing is written twice.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

import docstream
from docstream.corpus import SUFFIXES, Document, Rejected, iter_corpus
from docstream.model import State, load_model
from docstream.model.formats.hf_files import checkpoint_fingerprint
from docstream.store.config import RunConfig
from docstream.store.run_store import Progress, RunStore, SnapshotRef
from docstream.stream.clock import StageClock
from docstream.stream.committer import Committer, PendingCommit
from docstream.stream.engine import ChunkRecord, DocumentDone, Stream, StreamTask
from docstream.stream.preflight import check_run
from docstream.tokenizer import Tokenizer, load_tokenizer


@dataclass
class RunSummary:
    processed: int = 0
    skipped: int = 0
    resumed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    rejected: Counter = field(default_factory=Counter)
    invalid_utf8_bytes: int = 0
    nul_chars: int = 0
    worker_restarts: int = 0
    changed: int = 0
    gone: int = 0
    #: seconds per pipeline stage (see docstream.stream.clock.MEANINGS; stages overlap)
    stages: dict[str, float] = field(default_factory=dict)
    #: the fraction of the run's wall time the model was busy (near 1: the job is model-bound)
    model_busy: float = 0.0
    #: the batch size the run used (chosen from the device when not given)
    batch_size: int = 0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        """The summary as plain JSON values (``docstream run --json``)."""
        return dict(vars(self), rejected=dict(self.rejected), tok_s=self.tok_s)

    def lines(self, out: Path) -> list[str]:
        lines = [f"documents processed {self.processed} (resumed mid-document {self.resumed}), "
                 f"already done {self.skipped}, rejected {sum(self.rejected.values())}",
                 f"tokens {self.tokens} in {self.seconds:.1f} s ({self.tok_s:.0f} tok/s, batch {self.batch_size})"]
        if self.stages and self.tokens:
            lines.append(f"model busy {self.model_busy:.0%} of the time; seconds per stage (stages overlap): "
                         + ", ".join(f"{name} {sec:.1f}" for name, sec in self.stages.items()))
        if self.rejected:
            lines.append("rejected: " + ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items())))
        if self.invalid_utf8_bytes or self.nul_chars:
            lines.append(f"repaired: {self.invalid_utf8_bytes} invalid UTF-8 bytes replaced, "
                         f"{self.nul_chars} NUL characters removed")
        if self.changed:
            lines.append(f"changed since their outputs were made: {self.changed} (old outputs retracted, "
                         f"streamed again from the start)")
        if self.gone:
            lines.append(f"gone from the input while unfinished: {self.gone} (their partial outputs retracted)")
        if self.worker_restarts:
            lines.append(f"workers replaced after dying: {self.worker_restarts} (their unfinished documents "
                         f"went on from their last committed snapshot)")
        lines.append(f"outputs in {out}")
        return lines


class _CommitWriter:
    """Buffers events and commits them; embedding rows wait for a snapshot that covers them."""

    def __init__(self, store: RunStore, seq: int, model_fingerprint: str, commit_every: int,
                 known: set[str] = frozenset(), committer: Committer | None = None):
        self.store, self.seq, self.fingerprint, self.commit_every = store, seq, model_fingerprint, commit_every
        #: writes the commits on a background thread (None: each commit is written before flush returns)
        self.committer = committer
        self._held: dict[str, list[dict]] = {}
        #: content sha256 of the documents being streamed, recorded with their rows
        self.content: dict[str, str] = {}
        #: documents with committed rows (a rejection of one retracts them)
        self.known = set(known)
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list[dict]] = {"embeddings": [], "snapshots": [], "documents": [], "errors": []}
        self.finished: list[str] = []
        self.rejected_sources: list[str] = []
        self.rejected_content: dict[str, str] = {}
        self.in_flight: dict[str, tuple[int, int]] = {}
        self.retracted: list[str] = []
        self.gone: list[str] = []
        self.cleared: list[str] = []
        self.chunks = 0

    def clear_rejection(self, source: str) -> None:
        """``source`` was rejected before and is processed now: its error rows stop counting."""
        self.cleared.append(source)

    def retract(self, doc_id: str, gone: bool = False) -> None:
        """Make ``doc_id``'s committed rows stop counting from the next commit on (rows it gets later
        count); ``gone`` records that it left the input."""
        self._held.pop(doc_id, None)
        self.in_flight.pop(doc_id, None)
        self.retracted.append(doc_id)
        self.known.discard(doc_id)
        if gone:
            self.gone.append(doc_id)

    def add(self, event) -> None:
        if isinstance(event, ChunkRecord):
            self._add_chunk(event)
        elif isinstance(event, DocumentDone):
            self.rows["documents"].append(dict(doc_id=event.doc_id, source=event.source, n_tokens=event.n_tokens,
                                               n_chunks=event.n_chunks, **vars(event.stats)))
            self.finished.append(event.doc_id)
            self.in_flight.pop(event.doc_id, None)
            self._held.pop(event.doc_id, None)
        elif isinstance(event, Rejected):
            self.rows["errors"].append(dict(doc_id=event.doc_id, source=event.source, reason=event.reason,
                                            detail=event.detail))
            self.rejected_sources.append(event.source)
            if event.doc_id in self.content:  # rejected by the engine: the same content is not tried again
                self.rejected_content[event.source] = self.content[event.doc_id]
            if event.reason != "duplicate_id":  # a duplicate's id belongs to its first occurrence, still streaming
                self._held.pop(event.doc_id, None)
                self.in_flight.pop(event.doc_id, None)
                if event.doc_id in self.known:  # rows of an earlier version of the document
                    self.retract(event.doc_id)
        # a document's last chunk and its DocumentDone (which the engine emits right after it) go into
        # one commit: committed final embeddings without "finished" would be redone on resume
        last_chunk = isinstance(event, ChunkRecord) and event.is_last
        if self.chunks >= self.commit_every and not last_chunk:
            self.flush()

    def _add_chunk(self, rec: ChunkRecord) -> None:
        self.chunks += 1
        held = self._held.setdefault(rec.doc_id, [])
        held.append(dict(doc_id=rec.doc_id, chunk_index=rec.chunk_index, token_start=rec.token_start,
                         token_end=rec.token_end, vectors=rec.vectors, tokens=rec.tokens))
        if rec.state is None:
            return
        # the state is serialized and hashed when the commit is written (on the writer's thread)
        self.rows["snapshots"].append(dict(
            doc_id=rec.doc_id, chunk_index=rec.chunk_index, token_start=rec.token_start, token_end=rec.token_end,
            is_final=rec.is_last, model_fingerprint=self.fingerprint, state=rec.state))
        self.rows["embeddings"].extend(held)
        held.clear()
        if not rec.is_last:
            self.in_flight[rec.doc_id] = (rec.chunk_index, rec.token_end)

    def discard(self, doc_id: str) -> None:
        """Forget ``doc_id``'s embedding rows that no snapshot covers yet (they will be computed again)."""
        self._held.pop(doc_id, None)

    def flush(self) -> None:
        """Commit what is buffered (a no-op when nothing is): written before this returns, or handed to
        the background committer (see :meth:`sync`)."""
        if (not any(self.rows.values()) and not self.finished and not self.rejected_sources
                and not self.retracted and not self.cleared):
            return
        self.seq += 1
        part = f"snapshots/part-{self.seq:08d}.parquet"
        content = {d: self.content[d] for d in (*self.finished, *self.in_flight) if d in self.content}
        commit = PendingCommit(self.seq, self.rows, self.finished, self.rejected_sources,
                               {d: SnapshotRef(part, c, t) for d, (c, t) in self.in_flight.items()}, content,
                               retracted=self.retracted, gone=self.gone, rejected_content=self.rejected_content,
                               cleared=self.cleared)
        if self.committer is None:
            commit.write(self.store)
        else:
            self.committer.submit(commit)
        self.known.update(self.finished, self.in_flight)
        for doc_id in self.finished:
            self.content.pop(doc_id, None)
        self._reset()

    def sync(self) -> None:
        """:meth:`flush`, then wait until every commit handed to the background committer is written."""
        self.flush()
        if self.committer is not None:
            self.committer.drain()


def check_inputs(config: RunConfig) -> None:
    """Fail before any work when a path the run needs is missing."""
    for what, path in (("model checkpoint", config.model), ("tokenizer file", config.tokenizer),
                       ("input corpus", config.input)):
        if not Path(path).exists():
            raise FileNotFoundError(f"{what} {str(path)!r} does not exist")


def _check_resume(saved: dict, current: dict, out: Path) -> None:
    # backend, device and strategy joined the identity later: a folder that predates them does not record them
    problems = [f"{key}: this directory has {saved.get(key)!r}, this run has {value!r}"
                for key, value in current.items() if saved.get(key) != value
                and not (key in ("backend", "device", "strategy") and key not in saved
                         and (key != "strategy" or value is None))]
    if problems:
        raise ValueError(f"{out} was written by a run with other settings, so this run cannot resume it "
                         f"({'; '.join(problems)}); use another --out, or the original settings")


def _tasks(config: RunConfig, store: RunStore, progress: Progress, fingerprint: str, summary: RunSummary,
           writer: _CommitWriter, seen: set[str]) -> Iterator[StreamTask | Rejected]:
    """The corpus as engine tasks: finished and still-rejected documents skipped, unfinished ones resumed,
    and documents whose content changed since their rows were made retracted and streamed again from
    the start. Every document id met is added to ``seen``.

    Rejections are keyed by content, not by place: a source rejected before is skipped only while the
    corpus still rejects it, or while its content is what the engine rejected, so a fixed line or a
    once-empty file is processed on the next run.
    """
    for item in iter_corpus(config.input, config.input_format, config.id_field, config.text_field):
        if isinstance(item, Rejected):
            if item.reason != "duplicate_id":
                seen.add(item.doc_id)
            if item.source not in progress.rejected_sources:
                yield item
            elif item.doc_id in writer.known:  # had rows before it became unreadable / empty
                writer.retract(item.doc_id)
            continue
        seen.add(item.doc_id)
        content = content_sha256(item)
        if progress.rejected_content.get(item.source) == content:
            continue
        if item.source in progress.rejected_sources:  # fixed since it was rejected
            writer.clear_rejection(item.source)
        recorded = progress.content.get(item.doc_id)
        done = item.doc_id in progress.finished or item.doc_id in progress.in_flight
        if done and recorded is not None and recorded != content:
            writer.retract(item.doc_id)
            summary.changed += 1
            done = False
        if item.doc_id in progress.finished and done:
            summary.skipped += 1
            continue
        writer.content[item.doc_id] = content  # recorded with the rows it is about to get
        if not done:
            yield StreamTask(item)
        else:
            yield _resume_task(item, store, progress.in_flight[item.doc_id], fingerprint)
            summary.resumed += 1


def content_sha256(doc: Document) -> str:
    """sha256 of the text a document gives the model (after docstream's repairs): what decides its rows."""
    digest = hashlib.sha256()
    for piece in doc.pieces():
        digest.update(piece.encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


def _retract_gone(writer: _CommitWriter, progress: Progress, seen: set[str], summary: RunSummary) -> None:
    """Retract the rows of unfinished documents that are no longer in the input, and record them as gone."""
    for doc_id in sorted(set(progress.in_flight) - seen):
        writer.retract(doc_id, gone=True)
        summary.gone += 1


def _resume_task(doc: Document, store: RunStore, ref: SnapshotRef, fingerprint: str) -> StreamTask:
    row = store.read_snapshot(doc.doc_id, ref)
    if row["model_fingerprint"] != fingerprint:
        raise ValueError(f"the snapshot of {doc.doc_id!r} was made by another model "
                         f"({row['model_fingerprint'][:12]}…, this run uses {fingerprint[:12]}…)")
    return StreamTask(doc, start_token=ref.token_end, state=State.from_bytes(row["state"]))


def count_documents(config: RunConfig) -> int | None:
    """Cheap document count for the progress bar's ETA (None when it would need a real pass)."""
    path = Path(config.input)
    if path.is_dir() and config.input_format in ("auto", "text"):
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in SUFFIXES["text"] and p.is_file())
    if path.suffix.lower() == ".jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def run(config: RunConfig) -> RunSummary:
    """Stream ``config.input`` into ``config.out``; resumes what an earlier run on ``out`` left.

    ``config.engine`` picks where the model runs: ``"local"`` in this process, ``"ray"`` on Ray workers
    (:mod:`docstream.stream.ray_engine`); both write the same outputs through the same commits.
    """
    check_inputs(config)
    tokenizer = load_tokenizer(config.tokenizer)
    check_run(config, tokenizer)  # a wrong pairing or an empty corpus is refused before any folder is made
    if config.engine == "ray":
        from docstream.stream.ray_engine import require_ray

        require_ray(config.address)
    store = RunStore(config.out)
    store.acquire()
    try:
        return _run_locked(config, store, tokenizer)
    finally:
        store.release()


class _Recorder:
    """Where an engine delivers its events: committed through a :class:`_CommitWriter` and counted in
    the summary and the progress bar.

    An engine delivers each document's events in order and never stops between a document's last
    chunk and its ``DocumentDone`` (the engine emits them together), so a commit can fall between any
    two deliveries.
    """

    def __init__(self, store: RunStore, writer: _CommitWriter, summary: RunSummary, bar: tqdm, fingerprint: str,
                 clock: StageClock | None = None):
        self.store, self.writer, self.summary, self.bar, self.fingerprint = store, writer, summary, bar, fingerprint
        self.clock = clock or StageClock()
        self.start = time.perf_counter()

    def add(self, event: ChunkRecord | DocumentDone | Rejected) -> None:
        self.writer.add(event)
        summary = self.summary
        if isinstance(event, ChunkRecord):
            summary.tokens += event.token_end - event.token_start
            elapsed = time.perf_counter() - self.start
            self.bar.set_postfix(tokens=summary.tokens, tok_s=f"{summary.tokens / max(elapsed, 1e-9):.0f}",
                                 refresh=False)
        elif isinstance(event, DocumentDone):
            summary.processed += 1
            summary.invalid_utf8_bytes += event.stats.invalid_utf8_bytes
            summary.nul_chars += event.stats.nul_chars
            self.bar.update(1)
        elif isinstance(event, Rejected):
            summary.rejected[event.reason] += 1
            self.bar.update(1)

    def worker_lost(self, docs: list[Document]) -> list[StreamTask]:
        """Tasks that take over ``docs`` from a worker that died with their events partly delivered.

        Commits everything delivered so far, forgets each document's rows that no snapshot covers
        (they are computed again), and returns a task for each document neither finished nor
        rejected: from its last committed snapshot, or from its start when it has none.
        """
        self.writer.sync()
        progress = self.store.progress()
        tasks = []
        for doc in docs:
            self.writer.discard(doc.doc_id)
            content = self.writer.content.get(doc.doc_id)
            if doc.doc_id in progress.finished or (content is not None
                                                    and progress.rejected_content.get(doc.source) == content):
                continue
            ref = progress.in_flight.get(doc.doc_id)
            tasks.append(StreamTask(doc) if ref is None else _resume_task(doc, self.store, ref, self.fingerprint))
        self.summary.worker_restarts += 1
        return tasks

    def close(self) -> None:
        """Commit what is left, wait until it is written, and stop the clock."""
        self.writer.sync()
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start
        self.summary.stages = self.clock.totals()
        self.summary.model_busy = self.clock.model_busy(self.summary.seconds)


def _open_output(config: RunConfig, store: RunStore, tokenizer: Tokenizer) -> str:
    """The run's model fingerprint, after checking that ``store`` may be resumed with ``config`` (or
    recording ``config`` in a new one)."""
    fingerprint = checkpoint_fingerprint(config.model)
    identity = dict(config.result_settings(), model_fingerprint=fingerprint,
                    tokenizer_fingerprint=tokenizer.fingerprint())
    saved = store.read_config()
    if saved is not None:
        _check_resume(saved["identity"], identity, store.out)
    else:
        store.write_config({"identity": identity, "settings": config.model_dump(mode="json"),
                            "docstream_version": docstream.__version__})
    return fingerprint


def _run_locked(config: RunConfig, store: RunStore, tokenizer: Tokenizer) -> RunSummary:
    model = None
    if config.engine == "local":  # loaded first: a device or model that fails leaves no settings behind
        model = load_model(config.model, **config.model_args())
    fingerprint = _open_output(config, store, tokenizer)
    progress = store.progress()
    summary = RunSummary(batch_size=_batch_size(config, model))
    clock = StageClock()
    committer = Committer(store, clock)
    try:
        writer = _CommitWriter(store, progress.last_seq, fingerprint, config.commit_every,
                               known=progress.finished | set(progress.in_flight), committer=committer)
        bar = tqdm(total=count_documents(config), unit="doc", desc="docstream run", disable=config.quiet,
                   initial=len(progress.finished) + len(progress.rejected_sources))
        recorder = _Recorder(store, writer, summary, bar, fingerprint, clock)
        seen: set[str] = set()
        tasks = _tasks(config, store, progress, fingerprint, summary, writer, seen)
        if model is None:
            from docstream.stream.ray_engine import stream_on_ray

            stream_on_ray(config.model_copy(update={"batch_size": summary.batch_size}), tasks, recorder,
                          fingerprint, tokenizer.fingerprint())
        else:
            if config.cuda_graphs:
                from docstream.model.graphs import capture_forward

                capture_forward(model, summary.batch_size, config.chunk_len)  # warns and runs eagerly on failure
            stream = Stream(model, tokenizer, config.chunk_len, summary.batch_size, config.snapshot_every,
                            clock=clock)
            for event in stream.run(tasks):
                recorder.add(event)
        _retract_gone(writer, progress, seen, summary)
        recorder.close()
    except BaseException:
        # the commits already handed over are written before the run folder's lock is released;
        # the error that stopped the run is the one raised
        committer.close(quiet=True)
        raise
    committer.close()
    return summary


def _batch_size(config: RunConfig, model) -> int:
    """The run's batch size: the given one, else the device's default (docstream.stream.sizing)."""
    from docstream.stream.sizing import CPU_BATCH, RAY_GPU_BATCH, default_batch_size

    if config.batch_size is not None:
        return config.batch_size
    if model is not None:
        return default_batch_size(model, config.chunk_len)
    return RAY_GPU_BATCH if config.device.startswith("cuda") else CPU_BATCH
