"""Summaries generated from a run's snapshots: no document is read again.

A run keeps each document's recurrent state every ``snapshot_every`` chunks and at its end. The state
after a chunk holds everything the model read up to it, so appending a prompt such as
``"\\n\\nTL;DR:"`` to it and generating summarizes the document up to that chunk: the final snapshot
summarizes the whole document, an earlier one ("the first 40%") only what precedes it, and neither
re-reads any text. Many documents are summarized in one batch (see :func:`generate`).

Templates (``template=``): ``"world"`` (RWKV World chat: ``"\\n\\nUser: <instruction>\\n\\nAssistant:"``),
``"instruct"`` (``"\\n\\nInstruction: <instruction>\\n\\nResponse:"``), ``"tldr"`` (Pile style
``"\\n\\nTL;DR:"``), or any other string, used as the prompt itself (``{instruction}`` in it is replaced
by ``instruction``). ``instruction`` replaces the built-in one of ``world`` and ``instruct``.

Instruction first: RWKV reads once, left to right, so it follows a task better when it knows the task
before the document. With ``instruction_first=True`` the instruction goes *before* the document
(``"User: <instruction>\\n\\n<document>\\n\\nAssistant:"``); the snapshots of an ordinary run cannot
serve, since they hold no instruction, so the documents are read from the run's corpus again and
streamed chunk by chunk from :func:`prefix_state` (costing a full pass over each document).
A run streamed from a prefix state is a different run: its snapshots only fit that prefix, so the
prefix is a run setting of its own; :func:`prefix_state` gives the engine its initial state.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from docstream.corpus import Document, iter_corpus
from docstream.corpus.chunker import TokenChunk, iter_chunks
from docstream.files import atomic_write_bytes
from docstream.model import RWKVModel, State, load_model
from docstream.model.feed import feed_chunks
from docstream.model.formats.hf_files import checkpoint_fingerprint
from docstream.store.config import RunConfig
from docstream.store.reader import document_rows, run_settings
from docstream.store.schemas import SUMMARY_SCHEMA
from docstream.store.snapshots import SnapshotInfo, final_snapshot, list_snapshots, load_snapshot, snapshot_at
from docstream.tasks.config import DEFAULT_SAMPLING
from docstream.tasks.generate import Generation, SamplingConfig, generate
from docstream.tokenizer import Tokenizer, load_tokenizer

__all__ = ["DEFAULT_SAMPLING", "TEMPLATES", "Prompt", "Streamed", "Summary", "SummaryRun", "Template",
           "build_prompt", "prefix_state", "row_seed", "stream_document", "summarize",
           "summarize_text"]


@dataclass(frozen=True)
class Template:
    """A built-in prompt layout; ``{instruction}`` marks where the instruction goes.

    ``after``: the prompt appended after the document; ``prefix``/``suffix``: the layout with the
    instruction before the document (None: the template has no such layout); ``stop``: the stop
    strings used when the sampling settings name none.
    """

    name: str
    after: str
    instruction: str | None
    prefix: str | None
    suffix: str | None
    first_instruction: str | None
    stop: tuple[str, ...]


TEMPLATES: dict[str, Template] = {
    "world": Template("world", "\n\nUser: {instruction}\n\nAssistant:",
                      "Summarize the text above in a few sentences.", "User: {instruction}\n\n",
                      "\n\nAssistant:", "Summarize the following text in a few sentences.", ("\n\n",)),
    "instruct": Template("instruct", "\n\nInstruction: {instruction}\n\nResponse:", "Summarize the text above.",
                         "Instruction: {instruction}\n\nInput: ", "\n\nResponse:", "Summarize the following text.",
                         ("\n\n",)),
    "tldr": Template("tldr", "\n\nTL;DR:", None, None, None, None, ("\n\n",)),
}


@dataclass(frozen=True)
class Prompt:
    """The text put before (``prefix``) and after (``suffix``) a document, and the stop strings to use."""

    template: str
    prefix: str
    suffix: str
    stop: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    """One document's summary and where in the document it was taken."""

    doc_id: str
    chunk_index: int
    token_end: int
    is_final: bool
    text: str
    tokens: list[int]
    finish_reason: str
    seed: int


@dataclass(frozen=True)
class SummaryRun:
    """The summaries of one :func:`summarize` call and the Parquet file they were written to."""

    path: Path
    summaries: list[Summary]
    prompt: Prompt
    sampling: SamplingConfig


def build_prompt(template: str = "world", instruction: str | None = None, instruction_first: bool = False) -> Prompt:
    """The prompt text of ``template`` (a built-in name or a custom prompt string), see the module docstring."""
    if template not in TEMPLATES:
        if instruction_first:
            raise ValueError(f"instruction_first needs a built-in template with an instruction layout "
                             f"('world' or 'instruct'), not the custom prompt {template!r}")
        text = template.replace("{instruction}", instruction) if instruction is not None else template
        return Prompt("custom", "", text, ())
    spec = TEMPLATES[template]
    if spec.instruction is None:
        if instruction is not None or instruction_first:
            raise ValueError(f"template {template!r} has no instruction, so it takes neither an instruction nor "
                             f"instruction_first; use 'world' or 'instruct', or a custom prompt string")
        return Prompt(template, "", spec.after, spec.stop)
    if instruction_first:
        text = instruction if instruction is not None else spec.first_instruction
        return Prompt(template, spec.prefix.replace("{instruction}", text), spec.suffix, spec.stop)
    text = instruction if instruction is not None else spec.instruction
    return Prompt(template, "", spec.after.replace("{instruction}", text), spec.stop)


def row_seed(seed: int, doc_id: str) -> int:
    """The sampling seed of one document: from ``seed`` and the id, so a document's summary does not
    depend on which other documents share its batch."""
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def prefix_state(model: RWKVModel, tokenizer: Tokenizer, prefix_text: str) -> State:
    """The state (one row) after reading ``prefix_text`` from the initial state.

    A document streamed from it reads as ``prefix_text`` followed by the document, the two tokenized
    separately. Use it as a run's initial state for runs whose documents all share a prefix.
    """
    tokens = tokenizer.encode(prefix_text)
    if not tokens:
        return model.init_state(1)
    return model.forward(tokens)[1]


@dataclass(frozen=True)
class Streamed:
    """A document read by :func:`stream_document`: the state after ``tokens`` tokens, the index of
    the last chunk read, and whether that was the whole document."""

    state: State
    tokens: int
    chunk_index: int
    whole: bool


def stream_document(model: RWKVModel, tokenizer: Tokenizer, doc: Document, state: State, chunk_len: int,
                    end_token: int | None = None) -> Streamed:
    """Stream ``doc`` chunk by chunk (its run's chunking) from ``state``, stopping after ``end_token``
    tokens (None: at the end)."""
    read, last_chunk, whole = 0, -1, False
    for chunk, fed in feed_chunks(model, _cut(iter_chunks(doc, tokenizer, chunk_len), end_token), state):
        state, read, last_chunk, whole = fed.state, chunk.end, chunk.index, chunk.is_last
    if read == 0:
        raise ValueError(f"document {doc.doc_id!r} ({doc.source}) has no tokens to summarize")
    return Streamed(state, read, last_chunk, whole)


def _cut(chunks: Iterable[TokenChunk], end_token: int | None) -> Iterator[TokenChunk]:
    """``chunks`` up to token ``end_token`` (None: all), the chunk holding it cut there (then it is the
    last one read, but ``is_last`` only when the document ends there)."""
    for chunk in chunks:
        if end_token is not None and chunk.end > end_token:
            if chunk.start < end_token:
                kept = chunk.tokens[:end_token - chunk.start]
                yield TokenChunk(chunk.index, chunk.start, end_token, kept, False)
            return
        yield chunk
        if chunk.end == end_token:
            return


def summarize_text(model: RWKVModel, tokenizer: Tokenizer, text: str, template: str = "world",
                   instruction: str | None = None, sampling: SamplingConfig | None = None,
                   instruction_first: bool = False, chunk_len: int = 1024,
                   on_token: Callable[[int, int, str], None] | None = None) -> Generation:
    """Summarize ``text`` directly: stream it chunk by chunk (from the instruction prefix with
    ``instruction_first``), append the template's prompt and generate."""
    prompt = build_prompt(template, instruction, instruction_first)
    config = _with_stops(sampling or DEFAULT_SAMPLING, prompt)
    start = prefix_state(model, tokenizer, prompt.prefix)
    read = stream_document(model, tokenizer, Document.from_text("text", text), start, chunk_len)
    return generate(model, tokenizer, read.state, [tokenizer.encode(prompt.suffix)], config, on_token=on_token)[0]


def summarize(out: str | Path, doc_ids: Sequence[str] | None = None, at_chunk: int | None = None,
              template: str = "world", instruction: str | None = None, sampling: SamplingConfig | None = None,
              instruction_first: bool = False, name: str | None = None, batch_size: int = 8,
              device: str | None = None, on_token: Callable[[str, int, str], None] | None = None,
              on_finish: Callable[[Summary], None] | None = None, progress: bool = True,
              cuda_graphs: bool = False) -> SummaryRun:
    """Summarize documents of the run at ``out`` and write ``out/summaries/<name>.parquet``.

    Args:
        doc_ids: the documents (default: every document the run finished, or, with ``at_chunk``,
            every document with a snapshot at that chunk).
        at_chunk: summarize the document up to the end of this chunk, which must have a snapshot
            (default: the final snapshot, i.e. the whole document).
        template, instruction, instruction_first: the prompt; see the module docstring.
        sampling: default :data:`DEFAULT_SAMPLING`; with no stop strings the template's are used.
            Each document samples with the seed :func:`row_seed` (``sampling.seed``, doc id).
        name: the output file's name (default: a UTC timestamp); an existing file is replaced.
        batch_size: documents generated at once.
        device: where the model runs (default: the run's device).
        on_token: ``(doc_id, token id, new text)`` as text is generated; ``on_finish``: each summary
            as soon as it is done.
        cuda_graphs: on a GPU, replay each decoding step from a CUDA graph per batch size
            (:func:`docstream.model.graphs.enable_step_graphs`; experimental, not yet run on a GPU).

    Raises:
        ValueError: unknown documents, a chunk without snapshot (the message names those that have
            one), a changed model checkpoint, or bad settings.
        FileNotFoundError: ``out`` is not a run's output directory.
    """
    out = Path(out)
    path = _output_path(out, name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if doc_ids is not None and not doc_ids:
        raise ValueError("doc_ids is empty; pass None to summarize every finished document")
    if at_chunk is not None and at_chunk < 0:
        raise ValueError(f"at_chunk must be a chunk index (0 or more), got {at_chunk}")
    settings = run_settings(out)
    prompt = build_prompt(template, instruction, instruction_first)
    config = _with_stops(sampling or DEFAULT_SAMPLING, prompt)
    targets = _targets(out, doc_ids, at_chunk, instruction_first)
    fingerprint = _check_model(settings, targets)
    model = load_model(settings.model, **settings.model_args(device))
    if cuda_graphs:
        from docstream.model.graphs import enable_step_graphs

        enable_step_graphs(model)  # refuses a model off CUDA, by name
    tokenizer = load_tokenizer(settings.tokenizer)
    states = _StateSource(out, model, tokenizer, settings, prompt, targets, instruction_first)
    summaries = _generate_all(model, tokenizer, states, prompt, config, batch_size, on_token, on_finish, progress)
    _write(path, summaries, prompt, config, instruction_first, fingerprint)
    return SummaryRun(path, summaries, prompt, config)


def _with_stops(sampling: SamplingConfig, prompt: Prompt) -> SamplingConfig:
    if sampling.stop or not prompt.stop:
        return sampling
    return sampling.model_copy(update={"stop": list(prompt.stop)})


def _output_path(out: Path, name: str | None) -> Path:
    if name is None:
        name = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"summary name {name!r} must be a plain file name (no slashes, not starting with '.')")
    return out / "summaries" / (name if name.endswith(".parquet") else f"{name}.parquet")


# -- which documents, up to where ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    doc_id: str
    snapshot: SnapshotInfo | None
    chunk_index: int | None


def _targets(out: Path, doc_ids: Sequence[str] | None, at_chunk: int | None,
             instruction_first: bool) -> list[_Target]:
    """The documents to summarize and the snapshot (or, with instruction_first, the chunk) of each."""
    if instruction_first:
        ids = list(dict.fromkeys(doc_ids)) if doc_ids is not None else [row["doc_id"] for row in document_rows(out)]
        if not ids:
            raise ValueError(f"the run at {out} has finished no documents yet; name documents with doc_ids")
        return [_Target(d, None, at_chunk) for d in ids]
    snapshots = list_snapshots(out, doc_ids)
    if doc_ids is not None:
        return [_Target(d, _pick(d, snapshots, at_chunk, out), at_chunk) for d in dict.fromkeys(doc_ids)]
    targets = []
    for doc_id, infos in snapshots.items():
        chosen = [i for i in infos if (i.is_final if at_chunk is None else i.chunk_index == at_chunk)]
        targets.extend(_Target(doc_id, c, c.chunk_index) for c in chosen[:1])
    if not targets:
        where = "a final snapshot" if at_chunk is None else f"a snapshot at chunk {at_chunk}"
        seen = sorted({i.chunk_index for infos in snapshots.values() for i in infos})
        raise ValueError(f"no document of the run at {out} has {where}; chunks with snapshots: "
                         f"{', '.join(map(str, seen)) or '(none: the run has committed no snapshot)'}")
    return targets


def _pick(doc_id: str, snapshots: dict[str, list[SnapshotInfo]], at_chunk: int | None, out: Path) -> SnapshotInfo:
    if doc_id not in snapshots:
        known = ", ".join(repr(d) for d in list(snapshots)[:5]) or "none"
        raise ValueError(f"document {doc_id!r} has no committed snapshot in {out} (the run has not reached it, "
                         f"or no such document exists); documents with snapshots include {known}")
    infos = snapshots[doc_id]
    return final_snapshot(doc_id, infos) if at_chunk is None else snapshot_at(doc_id, infos, at_chunk)


def _check_model(settings: RunConfig, targets: list[_Target]) -> str:
    """The checkpoint's fingerprint, checked against the one the snapshots were made with."""
    if not Path(settings.model).exists():
        raise FileNotFoundError(f"the run's model checkpoint {str(settings.model)!r} does not exist any more")
    fingerprint = checkpoint_fingerprint(settings.model)
    for t in targets:
        if t.snapshot is not None and t.snapshot.model_fingerprint != fingerprint:
            raise ValueError(f"the snapshot of {t.doc_id!r} was made by another model "
                             f"({t.snapshot.model_fingerprint[:12]}…) than {str(settings.model)!r} is now "
                             f"({fingerprint[:12]}…); the checkpoint changed since the run")
    return fingerprint


class _StateSource:
    """The state of each target after its text: a snapshot, or the document streamed from a prefix."""

    def __init__(self, out: Path, model: RWKVModel, tokenizer: Tokenizer, settings: RunConfig, prompt: Prompt,
                 targets: list[_Target], instruction_first: bool):
        self.out, self.model, self.tokenizer, self.settings = out, model, tokenizer, settings
        self.targets = targets
        self.documents = _find_documents(settings, [t.doc_id for t in targets]) if instruction_first else {}
        self.start = prefix_state(model, tokenizer, prompt.prefix) if instruction_first else None

    def load(self, target: _Target) -> tuple[State, int, int, bool]:
        """(state, token_end, chunk_index, is_final) of ``target``."""
        if target.snapshot is not None:
            info = target.snapshot
            return load_snapshot(self.out, info), info.token_end, info.chunk_index, info.is_final
        end = None if target.chunk_index is None else (target.chunk_index + 1) * self.settings.chunk_len
        doc = self.documents[target.doc_id]
        read = stream_document(self.model, self.tokenizer, doc, self.start, self.settings.chunk_len, end)
        if target.chunk_index is not None and read.chunk_index != target.chunk_index:
            raise ValueError(f"document {target.doc_id!r} has only {read.chunk_index + 1} chunks, so it has no "
                             f"chunk {target.chunk_index}; pick a chunk below {read.chunk_index + 1}")
        return read.state, read.tokens, read.chunk_index, read.whole


def _find_documents(settings: RunConfig, doc_ids: list[str]) -> dict[str, Document]:
    """The named documents of the run's corpus (read again, lazily)."""
    wanted, found = set(doc_ids), {}
    for item in iter_corpus(settings.input, settings.input_format, settings.id_field, settings.text_field):
        if isinstance(item, Document) and item.doc_id in wanted:
            found[item.doc_id] = item
            if len(found) == len(wanted):
                break
    missing = [d for d in doc_ids if d not in found]
    if missing:
        raise ValueError(f"documents {missing} are not in the run's corpus {str(settings.input)!r} "
                         f"(instruction_first reads them again from it); check the ids")
    return found


# -- generation and output ---------------------------------------------------------------------------
def _generate_all(model: RWKVModel, tokenizer: Tokenizer, source: _StateSource, prompt: Prompt,
                  config: SamplingConfig, batch_size: int, on_token, on_finish, progress: bool) -> list[Summary]:
    suffix = tokenizer.encode(prompt.suffix)
    if not suffix:
        raise ValueError("the prompt after the document is empty; generation needs at least one prompt token")
    summaries: list[Summary] = []
    targets = source.targets
    bar = tqdm(total=len(targets), unit="doc", desc="summarize", disable=not progress or len(targets) < 2,
               file=sys.stderr)
    for first in range(0, len(targets), batch_size):
        batch = targets[first:first + batch_size]
        summaries.extend(_generate_batch(model, tokenizer, source, batch, suffix, config, on_token, on_finish))
        bar.update(len(batch))
    bar.close()
    return summaries


def _generate_batch(model: RWKVModel, tokenizer: Tokenizer, source: _StateSource, batch: list[_Target],
                    suffix: list[int], config: SamplingConfig, on_token, on_finish) -> list[Summary]:
    """The summaries of one batch of documents, generated together."""
    loaded = [source.load(t) for t in batch]
    ids = [t.doc_id for t in batch]

    def token(row: int, tok: int, text: str) -> None:
        on_token(ids[row], tok, text)

    def finish(g: Generation) -> None:
        on_finish(_summary(batch[g.row], loaded[g.row], g))

    results = generate(model, tokenizer, State.stack([x[0] for x in loaded]), [suffix] * len(batch), config,
                       on_token=token if on_token is not None else None,
                       seeds=[row_seed(config.seed, d) for d in ids],
                       on_finish=finish if on_finish is not None else None)
    return [_summary(t, x, g) for t, x, g in zip(batch, loaded, results)]


def _summary(target: _Target, loaded: tuple[State, int, int, bool], g: Generation) -> Summary:
    _, token_end, chunk_index, is_final = loaded
    return Summary(target.doc_id, chunk_index, token_end, is_final, g.text, g.tokens, g.finish_reason, g.seed)


def _write(path: Path, summaries: Iterable[Summary], prompt: Prompt, config: SamplingConfig,
           instruction_first: bool, fingerprint: str) -> None:
    """The summaries as one Parquet file, written atomically."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sampling = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    rows = [dict(doc_id=s.doc_id, chunk_index=s.chunk_index, token_end=s.token_end, is_final=s.is_final,
                 template=prompt.template, instruction_first=instruction_first, prefix=prompt.prefix,
                 prompt=prompt.suffix, sampling=sampling, seed=s.seed, text=s.text, n_tokens=len(s.tokens),
                 finish_reason=s.finish_reason, model_fingerprint=fingerprint, created_at=created)
            for s in summaries]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA), sink, compression="zstd")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
