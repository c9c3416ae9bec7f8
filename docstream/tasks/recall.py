"""Recall probes: can the model retrieve a fact planted at some depth of a long context?

Tasks:

* ``passkey``: the Landmark-Attention passkey test. The context is a task description, filler
  sentences (``"The grass is green. The sky is blue. ..."`` repeated), the needle ``"The pass key
  is N. Remember it. N is the pass key."`` somewhere inside them, and the question ``"What is the
  pass key? The pass key is"``; the answer is ``" N"``, a random key in 1..50000 per trial.
* ``needle``: needle in a haystack with a configurable needle, question and answer.

The haystack is the filler, or the text of any corpus (:func:`~docstream.corpus.iter_corpus`,
documents joined with blank lines, repeated if too short, each trial starting at a random offset).

A cell is a context length ``L`` (in tokens of the given tokenizer: header + haystack + needle +
question is exactly ``L`` tokens) and a needle depth ``d`` %: the needle goes after
``round(d/100 * fill)`` haystack tokens (``fill = L - header - needle - question``), moved back to
the nearest sentence end unless ``snap_to_sentence`` is off. Every cell runs ``trials`` seeded trials.

Scores per trial: ``exact_match`` (greedy decoding after the question starts with the answer), and,
teacher-forced, ``logprob`` (sum of the log-softmax values of the answer tokens, each given the
context and the answer tokens before it) and ``first_token_rank`` (1 + the number of tokens with a
higher logit than the answer's first token): informative even for models too small to answer.

Cost model (tokens fed to the model). A state can be forked for free (states are values), so the
context before the needle is never read twice for one haystack. For each distinct haystack (one
shared by all trials for the filler, one per trial for a corpus haystack), the needle positions of
every (length, depth, trial) are sorted and the header and haystack are streamed once, up to the
deepest position, forking the state at each; every fork then reads its own continuation:

    prefix        = header + max(position)                       once per haystack
    continuation  = needle + (fill - position) + question - 1     per (length, depth, trial)
    answer        = len(answer)                                  per (length, depth, trial), teacher forcing
    generation    = tokens sampled (<= len(answer) + 3)          per (length, depth, trial), greedy

For one depth, the continuations cost ``sum over L of (1 - d/100) * L``; with lengths growing
geometrically (x2 or x4) that is about one pass over the longest haystack per depth and trial,
where running every cell from scratch costs ``sum over L of L`` for every depth.
:attr:`ProbeResult.tokens_fed` reports the counts per phase. Memory: one state per distinct needle
position of a haystack (at most lengths x depths x trials), plus ``batch_size`` continuations.
"""
from __future__ import annotations

import json
import random
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from docstream.corpus import Document, iter_corpus
from docstream.corpus.chunker import iter_tokens
from docstream.model import RWKVModel, State
from docstream.model.feed import feed_rows, feed_sequence
from docstream.tasks.config import ProbeConfig
from docstream.tasks.generate import Generation, SamplingConfig, generate
from docstream.tasks.heatmap import METRICS, format_tokens, plot_heatmap
from docstream.tokenizer import Tokenizer

__all__ = ["Cell", "ProbeConfig", "ProbeResult", "TrialText", "answer_matches",
           "build_trials", "context_tokens", "layout", "parse_depths", "parse_lengths", "probe",
           "sentence_boundaries", "teacher_forced", "write_results"]

PASSKEY_HEADER = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                  "I will quiz you about the important information there.")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NEEDLE_QUESTION = "What is the best thing to do in San Francisco? The best thing to do in San Francisco is"
NEEDLE_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day."
#: greedy decoding runs this many tokens past the answer's length, to see where the answer ends
EXTRA_DECODE_TOKENS = 3
_SENTENCE_END = re.compile(r"[.!?\n][\"')\]]*\s*$")


@dataclass(frozen=True)
class TrialText:
    """The token pieces of one trial: the context is header + haystack[:p] + needle + haystack[p:fill] + question."""

    trial: int
    header: list[int]
    haystack: np.ndarray
    boundaries: np.ndarray
    haystack_offset: int
    needle: list[int]
    question: list[int]
    answer: list[int]
    answer_text: str


@dataclass(frozen=True)
class Cell:
    """Where one trial's needle goes for one (length, depth): ``position`` haystack tokens precede it,
    ``fill`` haystack tokens are used in all."""

    length: int
    depth: float
    fill: int
    position: int


@dataclass
class ProbeResult:
    """One row per trial and one per cell (aggregated), the tokens fed per phase, and the settings."""

    config: ProbeConfig
    model_name: str
    trials: list[dict]
    cells: list[dict]
    tokens_fed: dict[str, int]
    created: str
    dtype: str = ""
    files: dict[str, Path] = field(default_factory=dict)


# -- parsing --------------------------------------------------------------------------------------
def parse_lengths(text: str) -> list[int]:
    """``"512,2k,1M"`` -> ``[512, 2048, 1048576]`` (K and M are powers of 1024)."""
    lengths = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", item)
        if match is None:
            raise ValueError(f"bad context length {item!r}; write token counts like 512, 4k or 1M, comma-separated")
        scale = {"": 1, "k": 1 << 10, "m": 1 << 20}[match.group(2).lower()]
        lengths.append(int(float(match.group(1)) * scale))
    if not lengths:
        raise ValueError(f"no context lengths in {text!r}; write e.g. 512,2k,8k")
    return lengths


def parse_depths(text: str) -> list[float]:
    """``"0,25,50"`` -> ``[0.0, 25.0, 50.0]`` (percentages)."""
    try:
        depths = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"bad needle depths {text!r}; write percentages like 0,25,50,75,100") from None
    if not depths:
        raise ValueError(f"no needle depths in {text!r}; write e.g. 0,50,100")
    return depths


# -- building contexts --------------------------------------------------------------------------------
def sentence_boundaries(tokens: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """Sorted token offsets at which a sentence has just ended (after ``.!?`` or a newline), and 0."""
    ids = np.unique(tokens)
    ends = [int(i) for i in ids if _ends_sentence(tokenizer, int(i))]
    after = np.nonzero(np.isin(tokens, ends))[0] + 1
    return np.concatenate(([0], after)).astype(np.int64)


def _ends_sentence(tokenizer: Tokenizer, token: int) -> bool:
    try:
        return bool(_SENTENCE_END.search(tokenizer.decode([token])))
    except ValueError:
        return False


def filler_tokens(tokenizer: Tokenizer, n: int) -> np.ndarray:
    """At least ``n`` tokens of the passkey filler, repeated."""
    unit = np.asarray(tokenizer.encode(PASSKEY_FILLER + " "), dtype=np.int64)
    return np.tile(unit, -(-max(n, 1) // len(unit)))


def corpus_tokens(config: ProbeConfig, tokenizer: Tokenizer, n: int) -> np.ndarray:
    """The first ``n`` tokens of the haystack corpus (documents joined by blank lines, repeated if short)."""
    separator = tokenizer.encode("\n\n")
    parts, total = [], 0
    for item in iter_corpus(config.haystack, config.haystack_format, config.id_field, config.text_field):
        if not isinstance(item, Document):
            continue
        for ids in iter_tokens(item, tokenizer):
            parts.append(np.asarray(ids, dtype=np.int64))
            total += len(ids)
        parts.append(np.asarray(separator, dtype=np.int64))
        if total >= n:
            break
    if total == 0:
        raise ValueError(f"the haystack corpus {str(config.haystack)!r} has no readable text; pass another --haystack")
    pool = np.concatenate(parts)
    return np.tile(pool, -(-n // len(pool)))[:n] if len(pool) < n else pool[:n]


def build_trials(config: ProbeConfig, tokenizer: Tokenizer) -> list[TrialText]:
    """The seeded trials of ``config``: pass keys (passkey) and haystack offsets (corpus haystack)."""
    passkey = config.task == "passkey"
    header = tokenizer.encode(PASSKEY_HEADER + "\n") if passkey else []
    question_text = PASSKEY_QUESTION if passkey else (config.question or NEEDLE_QUESTION)
    question = tokenizer.encode("\n" + question_text)
    fill_max = max(config.lengths) - len(header) - len(question)
    if fill_max < 1:
        raise ValueError(f"context length {max(config.lengths)} is too short for the header and question "
                         f"({len(header) + len(question)} tokens); use longer --lengths")
    if config.haystack is None:
        pool = filler_tokens(tokenizer, fill_max)
    else:
        pool = corpus_tokens(config, tokenizer, 2 * fill_max)
    boundaries: dict[int, np.ndarray] = {}
    trials = []
    for t in range(config.trials):
        rng = random.Random(config.seed * 1_000_003 + t)
        needle_text, answer_text = _needle_and_answer(config, rng)
        offset = 0 if config.haystack is None else rng.randrange(0, len(pool) - fill_max + 1)
        haystack = pool[offset:offset + fill_max]
        if offset not in boundaries:
            boundaries[offset] = sentence_boundaries(haystack, tokenizer)
        if not question_text[-1:].isspace() and not answer_text[:1].isspace():
            answer_text = " " + answer_text
        trials.append(TrialText(t, header, haystack, boundaries[offset], offset,
                                tokenizer.encode("\n" + needle_text + "\n"), question,
                                tokenizer.encode(answer_text), answer_text))
    return trials


def _needle_and_answer(config: ProbeConfig, rng: random.Random) -> tuple[str, str]:
    if config.task == "passkey":
        key = rng.randint(1, 50000)
        return PASSKEY_NEEDLE.format(key=key), str(key)
    return config.needle or NEEDLE, config.answer or NEEDLE_ANSWER


def layout(trial: TrialText, length: int, depth: float, snap: bool = True) -> Cell:
    """Where the needle of ``trial`` goes in a context of ``length`` tokens at ``depth`` %."""
    fixed = len(trial.header) + len(trial.needle) + len(trial.question)
    fill = length - fixed
    if fill < 0:
        raise ValueError(f"context length {length} is shorter than the header, needle and question alone "
                         f"({fixed} tokens); use lengths of at least {fixed}")
    target = round(depth / 100 * fill)
    if snap:
        target = int(trial.boundaries[np.searchsorted(trial.boundaries, target, side="right") - 1])
    return Cell(length, depth, fill, target)


def context_tokens(trial: TrialText, cell: Cell) -> list[int]:
    """The whole context of one trial in one cell (what the forks compute without building it)."""
    h = trial.haystack
    return [*trial.header, *h[:cell.position].tolist(), *trial.needle, *h[cell.position:cell.fill].tolist(),
            *trial.question]


# -- scoring ---------------------------------------------------------------------------------------
def teacher_forced(logits: torch.Tensor, answer: Sequence[int]) -> tuple[float, float, int]:
    """(log-prob of the answer, log-prob of its first token, rank of its first token) from the logits
    [len(answer), V] that predict each answer token (row i sees the answer tokens before i)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    values = [float(log_probs[i, token]) for i, token in enumerate(answer)]
    rank = 1 + int((logits[0] > logits[0, answer[0]]).sum())
    return sum(values), values[0], rank


def answer_matches(generated: str, answer: str) -> bool:
    """Whether ``generated`` starts with ``answer`` (whitespace collapsed, case ignored), ending where
    a word or number ends (``"123"`` does not match ``"1234"``)."""
    g, a = " ".join(generated.split()).casefold(), " ".join(answer.split()).casefold()
    if not a or not g.startswith(a):
        return False
    return len(g) == len(a) or not (g[len(a)].isalnum() and a[-1].isalnum())


# -- running ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    trial: TrialText
    cell: Cell

    def continuation(self) -> _Tokens:
        t, c = self.trial, self.cell
        return _Tokens([np.asarray(t.needle, np.int64), t.haystack[c.position:c.fill],
                        np.asarray(t.question[:-1], np.int64)])


class _Tokens:
    """A token sequence made of array pieces, sliced without being built whole."""

    def __init__(self, pieces: list[np.ndarray]):
        self.pieces = [p for p in pieces if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.pieces])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, span: slice) -> np.ndarray:
        """The tokens of ``span`` (a step-1 slice within the sequence) as one array."""
        start, end = span.start or 0, len(self) if span.stop is None else span.stop
        out = []
        for piece, at in zip(self.pieces, self.starts):
            lo, hi = max(start - at, 0), min(end - at, len(piece))
            if lo < hi:
                out.append(piece[lo:hi])
        return np.concatenate(out)


class _Runner:
    """Feeds token sequences to the model in chunks, counting the tokens per phase."""

    def __init__(self, model: RWKVModel, config: ProbeConfig, bar: tqdm):
        self.model, self.config, self.bar = model, config, bar
        self.fed = {"prefix": 0, "continuation": 0, "answer": 0, "generation": 0}

    def stream(self, tokens: np.ndarray, state: State, phase: str) -> State:
        """``state`` after ``tokens`` (one row), fed ``chunk_len`` at a time."""
        for start, fed in feed_sequence(self.model, tokens, state, self.config.chunk_len):
            state = fed.state
            self.count(phase, min(len(tokens) - start, self.config.chunk_len))
        return state

    def stream_rows(self, seqs: list[_Tokens], states: list[State]) -> list[State]:
        """Each state after its sequence: every step takes the next chunk of every row, rows whose
        chunks have the same length running as one batch."""
        fed = feed_rows(self.model, seqs, states, self.config.chunk_len, on_batch=self.on_batch("continuation"))
        return [f.state for f in fed]

    def on_batch(self, phase: str):
        """A :func:`~docstream.model.feed.feed_rows` hook counting the tokens of every forward in ``phase``."""
        return lambda batch: self.count(phase, batch.tokens.numel())

    def count(self, phase: str, n: int) -> None:
        """Record ``n`` tokens fed in ``phase`` (the progress bar follows the reading of contexts)."""
        self.fed[phase] += n
        if phase in ("prefix", "continuation"):
            self.bar.update(n)


def _prefix_forks(runner: _Runner, trial: TrialText, positions: Iterable[int]) -> dict[int, State]:
    """The state after header + haystack[:p] for every position p, streaming the haystack once."""
    state = runner.model.init_state(1)
    if trial.header:
        state = runner.stream(np.asarray(trial.header, np.int64), state, "prefix")
    forks, cursor = {}, 0
    for p in sorted(set(positions)):
        state = runner.stream(trial.haystack[cursor:p], state, "prefix")
        forks[p], cursor = state, p
    return forks


def _score(runner: _Runner, tokenizer: Tokenizer, jobs: list[_Job], states: list[State]) -> list[dict]:
    """Teacher-forced and greedy scores of each job from its state before the question's last token."""
    fed = feed_rows(runner.model, [[job.trial.question[-1], *job.trial.answer[:-1]] for job in jobs], states,
                    runner.config.chunk_len, logits="all", on_batch=runner.on_batch("answer"))
    forced = [teacher_forced(f.logits, job.trial.answer) for f, job in zip(fed, jobs)]
    longest = max(len(job.trial.answer) for job in jobs)
    greedy = SamplingConfig(temperature=0, max_tokens=longest + EXTRA_DECODE_TOKENS, stop=["\n"])
    generations = generate(runner.model, tokenizer, State.stack(states), [[job.trial.question[-1]] for job in jobs],
                           greedy)
    runner.count("generation", sum(len(g.tokens) + (g.finish_reason == "eos") for g in generations))
    return [_trial_row(runner.config, job, forced[i], g) for i, (job, g) in enumerate(zip(jobs, generations))]


def _trial_row(config: ProbeConfig, job: _Job, forced: tuple[float, float, int], g: Generation) -> dict:
    logprob, first, rank = forced
    t, c = job.trial, job.cell
    return dict(task=config.task, length=c.length, depth=c.depth, trial=t.trial, seed=config.seed,
                haystack_offset=t.haystack_offset, needle_position=len(t.header) + c.position, fill=c.fill,
                answer=t.answer_text.strip(), answer_tokens=len(t.answer), logprob=logprob,
                logprob_per_token=logprob / len(t.answer), first_token_logprob=first, first_token_rank=rank,
                generated=g.text, exact_match=answer_matches(g.text, t.answer_text))


def _aggregate(rows: list[dict]) -> list[dict]:
    """One row per (length, depth): accuracy and mean scores over the trials."""
    cells: dict[tuple[int, float], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["length"], row["depth"]), []).append(row)
    out = []
    for (length, depth), group in sorted(cells.items()):
        out.append(dict(task=group[0]["task"], length=length, depth=depth, trials=len(group),
                        accuracy=_mean(group, "exact_match"), mean_logprob=_mean(group, "logprob"),
                        mean_logprob_per_token=_mean(group, "logprob_per_token"),
                        mean_first_token_logprob=_mean(group, "first_token_logprob"),
                        mean_first_token_rank=_mean(group, "first_token_rank"),
                        median_first_token_rank=statistics.median(r["first_token_rank"] for r in group)))
    return out


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def probe(model: RWKVModel, tokenizer: Tokenizer, config: ProbeConfig, model_name: str = "model",
          progress: bool = True) -> ProbeResult:
    """Run the probe grid of ``config`` (see the module docstring for what is fed and scored)."""
    trials = build_trials(config, tokenizer)
    jobs = [_Job(t, layout(t, n, d, config.snap_to_sentence)) for t in trials
            for n in config.lengths for d in config.depths]
    groups: dict[int, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.trial.haystack_offset, []).append(job)
    planned = sum(len(g[0].trial.header) + max(j.cell.position for j in g) + sum(len(j.continuation()) for j in g)
                  for g in groups.values())
    bar = tqdm(total=planned, unit="tok", desc=f"probe {config.task}", disable=not progress, file=sys.stderr)
    runner = _Runner(model, config, bar)
    rows = []
    for group in groups.values():
        forks = _prefix_forks(runner, group[0].trial, (j.cell.position for j in group))
        ordered = sorted(group, key=lambda j: -len(j.continuation()))
        for first in range(0, len(ordered), config.batch_size):
            batch = ordered[first:first + config.batch_size]
            states = runner.stream_rows([j.continuation() for j in batch], [forks[j.cell.position] for j in batch])
            rows.extend(_score(runner, tokenizer, batch, states))
    bar.close()
    rows.sort(key=lambda r: (r["length"], r["depth"], r["trial"]))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dtype = str(getattr(model, "dtype", "")).removeprefix("torch.")
    return ProbeResult(config, model_name, rows, _aggregate(rows), dict(runner.fed), created, dtype)


# -- output --------------------------------------------------------------------------------------
def heatmap_title(result: ProbeResult, metric: str) -> str:
    c = result.config
    haystack = "filler" if c.haystack is None else f"haystack {Path(c.haystack).name}"
    return (f"{result.model_name}: {c.task} recall, {METRICS[metric][1]}\n"
            f"{c.trials} trials/cell, seed {c.seed}, {haystack}, {result.dtype or 'model dtype'}, "
            f"lengths {format_tokens(min(c.lengths))}-{format_tokens(max(c.lengths))}  ·  {result.created[:10]}")


def write_results(result: ProbeResult, out: str | Path, metric: str = "accuracy") -> dict[str, Path]:
    """Write trials and cells as Parquet and CSV, ``probe.json`` (settings, token counts) and
    ``heatmap.png`` under ``out``; returns the paths by name (also kept in ``result.files``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, rows in (("trials", result.trials), ("cells", result.cells)):
        table = pa.Table.from_pylist(rows)
        files[f"{name}_parquet"] = out / f"{name}.parquet"
        files[f"{name}_csv"] = out / f"{name}.csv"
        pq.write_table(table, files[f"{name}_parquet"])
        pacsv.write_csv(table, files[f"{name}_csv"])
    files["settings"] = out / "probe.json"
    files["settings"].write_text(json.dumps(
        {"model": result.model_name, "created": result.created, "dtype": result.dtype,
         "config": result.config.model_dump(mode="json"), "tokens_fed": result.tokens_fed}, indent=2) + "\n")
    files["heatmap"] = plot_heatmap(result.cells, out / "heatmap.png", heatmap_title(result, metric), metric)
    result.files = files
    return files
