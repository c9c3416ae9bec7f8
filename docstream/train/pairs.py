"""Training pairs for a contrastive embedder, built from plain text without labels.

Three kinds of pair come from one document (after Contriever and ICT):

* **crop**: two spans of the document cut independently at random (they may overlap or not);
* **neighbour**: a span and the span that directly follows it;
* **inverse cloze**: one sentence, and the passage around it with that sentence taken out.

A JSONL file of ``{"query": ..., "positive": ...}`` pairs can be mixed in. The pairs of step ``s`` depend
only on the seed and ``s`` (like :class:`docstream.train.data.Batches`), so a resumed run trains on the
batches an uninterrupted one would. Within a batch the documents differ as long as there are enough of
them: a second pair of the same document would otherwise be a false negative for the first.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docstream.tokenizer.base import Tokenizer
from docstream.train.data import read_texts

#: a sentence: from a non-space character to its closing punctuation or the end of its line
SENTENCE = re.compile(r"\S[^.!?\n]*(?:[.!?]+|$)", re.MULTILINE)
#: sentences kept on each side of an inverse-cloze sentence (before the token budget cuts them)
CLOZE_WINDOW = 4
KINDS = ("crop", "neighbour", "cloze", "jsonl")

Pair = tuple[list[int], list[int]]


@dataclass(frozen=True)
class Document:
    text: str
    ids: np.ndarray  # [T] int64 tokens of the whole text
    sentences: tuple[tuple[int, int], ...]  # character spans of the sentences


def load_documents(paths: Iterable[Path], tokenizer: Tokenizer) -> list[Document]:
    """The .txt/.md documents under ``paths`` that have at least two tokens, tokenized."""
    docs = []
    for text in read_texts(paths):
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        if len(ids) >= 2:
            docs.append(Document(text, ids, tuple(m.span() for m in SENTENCE.finditer(text))))
    return docs


def read_pairs(path: Path, tokenizer: Tokenizer) -> list[Pair]:
    """The (query, positive) pairs of a JSONL file, tokenized; a bad line is an error naming it."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not JSON ({err}); each line must be "
                                 f'{{"query": "...", "positive": "..."}}') from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                    for k in ("query", "positive")):
                raise ValueError(f"{path} line {number} needs non-empty string fields \"query\" and \"positive\"; "
                                 f"got {line.strip()[:80]!r}")
            pairs.append((tokenizer.encode(row["query"]), tokenizer.encode(row["positive"])))
    if not pairs:
        raise ValueError(f"{path} holds no pairs; give one JSON object per line or leave out --pairs")
    return pairs


def _span_length(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A length in [lo, hi] (both already within the document)."""
    return int(rng.integers(lo, hi + 1))


def crop_pair(doc: Document, rng: np.random.Generator, span_min: int, span_max: int) -> Pair:
    """Two spans of ``doc`` of span_min..span_max tokens (shorter documents: as long as they are),
    placed independently."""
    n = len(doc.ids)
    spans = []
    for _ in range(2):
        length = _span_length(rng, min(span_min, n), min(span_max, n))
        start = int(rng.integers(0, n - length + 1))
        spans.append(doc.ids[start:start + length].tolist())
    return spans[0], spans[1]


def neighbour_pair(doc: Document, rng: np.random.Generator, span_min: int, span_max: int) -> Pair:
    """A span of ``doc`` and the span right after it, each span_min..span_max tokens where the document
    is long enough (at least one token each)."""
    n = len(doc.ids)
    lo = max(1, min(span_min, n // 2))
    first = _span_length(rng, lo, min(span_max, n - lo))
    start = int(rng.integers(0, n - first - lo + 1))
    cut = start + first
    second = _span_length(rng, lo, min(span_max, n - cut))
    return doc.ids[start:cut].tolist(), doc.ids[cut:cut + second].tolist()


def cloze_pair(doc: Document, rng: np.random.Generator, tokenizer: Tokenizer, span_max: int) -> Pair | None:
    """One sentence of ``doc`` and the text around it without it (up to :data:`CLOZE_WINDOW` sentences on
    each side, cut to ``span_max`` tokens, half before and half after); None for a one-sentence document."""
    if len(doc.sentences) < 2:
        return None
    i = int(rng.integers(0, len(doc.sentences)))
    begin, end = doc.sentences[i]
    left_start = doc.sentences[max(0, i - CLOZE_WINDOW)][0]
    right_end = doc.sentences[min(len(doc.sentences) - 1, i + CLOZE_WINDOW)][1]
    left = tokenizer.encode(doc.text[left_start:begin]) if i > 0 else []
    right = tokenizer.encode(doc.text[end:right_end]) if i + 1 < len(doc.sentences) else []
    keep_left = left[max(0, len(left) - max(span_max // 2, span_max - len(right))):]
    context = keep_left + right[:span_max - len(keep_left)]
    sentence = tokenizer.encode(doc.text[begin:end])[:span_max]
    return (sentence, context) if sentence and context else None


@dataclass
class PairSampler:
    """The training pairs of each step: kinds drawn uniformly among those available."""

    docs: list[Document]
    tokenizer: Tokenizer
    span_min: int
    span_max: int
    seed: int
    extra: list[Pair] | None = None  # the JSONL pairs

    def __post_init__(self) -> None:
        if len(self.docs) < 2 and not self.extra:
            raise ValueError(f"contrastive training needs at least 2 documents of 2 or more tokens (each batch "
                             f"contrasts pairs of different documents); got {len(self.docs)}: add text files")
        self.kinds = [k for k in KINDS if (self.extra if k == "jsonl" else self.docs)]

    def batch(self, step: int, size: int) -> list[Pair]:
        """``size`` pairs for training step ``step``, each side cut to ``span_max`` tokens."""
        rng = np.random.default_rng([self.seed, step])
        order = rng.permutation(len(self.docs)) if self.docs else np.zeros(0, dtype=np.int64)
        pairs: list[Pair] = []
        for slot in range(size):
            kind = self.kinds[int(rng.integers(0, len(self.kinds)))]
            pair = None
            if kind == "jsonl" and self.extra:
                pair = self.extra[int(rng.integers(0, len(self.extra)))]
            else:
                doc = self.docs[int(order[slot % len(order)])]
                if kind == "cloze":
                    pair = cloze_pair(doc, rng, self.tokenizer, self.span_max)
                elif kind == "neighbour":
                    pair = neighbour_pair(doc, rng, self.span_min, self.span_max)
                if pair is None:  # crop, or a document too short for a cloze
                    pair = crop_pair(doc, rng, self.span_min, self.span_max)
            pairs.append((list(pair[0][:self.span_max]), list(pair[1][:self.span_max])))
        return pairs


def heldout_pairs(docs: list[Document], span: int, count: int) -> list[Pair]:
    """Fixed evaluation pairs: windows of ``2 * span`` tokens laid end to end over the held-out documents,
    each split into its first and second half; ``count`` of them, spread evenly over all windows."""
    windows = [doc.ids[s:s + 2 * span] for doc in docs for s in range(0, len(doc.ids) - 2 * span + 1, 2 * span)]
    if len(windows) < 2:
        raise ValueError(f"the held-out text holds {len(windows)} windows of {2 * span} tokens; recall@1 needs at "
                         f"least 2: add held-out text or lower span_min/ctx_len")
    picks = np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int)
    return [(windows[i][:span].tolist(), windows[i][span:].tolist()) for i in sorted(set(picks.tolist()))]
