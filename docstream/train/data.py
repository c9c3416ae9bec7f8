"""Training text: files gathered, tokenized once into a token file, and cut into batches by step number.

The batch of step ``s`` depends only on the seed and ``s`` (random windows drawn with a generator seeded
from both), so a resumed run sees exactly the batches an uninterrupted one would: the data position of a
training checkpoint is its step.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from docstream.files import atomic_write
from docstream.tokenizer.base import Tokenizer

TEXT_SUFFIXES = (".txt", ".md")
#: id placed between documents so the model learns where one ends (the tokenizer's id 0)
DOC_SEPARATOR = 0


def text_files(paths: Iterable[Path]) -> list[Path]:
    """Every .txt/.md file named by ``paths`` (files, or directories searched recursively), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"training text {str(path)!r} does not exist (expected a text file or directory)")
    if not found:
        raise ValueError(f"no .txt or .md files under {', '.join(map(str, paths))}")
    return found


def read_texts(paths: Iterable[Path]) -> Iterator[str]:
    """The documents' texts, one per file (UTF-8; a file that is not UTF-8 is an error naming it)."""
    for file in text_files(paths):
        try:
            yield file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{file} is not UTF-8 text ({err}); convert it or leave it out") from err


def tokenize_to_file(tokenizer: Tokenizer, paths: Iterable[Path], out: Path) -> np.ndarray:
    """All documents tokenized, separated by :data:`DOC_SEPARATOR`, saved to ``out`` (.npy, atomically)
    and returned memory-mapped. An existing ``out`` is reused as it is."""
    if not out.exists():
        if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
            raise ValueError(f"vocabulary of {tokenizer.vocab_size} ids does not fit the uint16 token file")
        ids: list[int] = []
        for text in read_texts(paths):
            ids.extend(tokenizer.encode(text))
            ids.append(DOC_SEPARATOR)
        atomic_write(out, lambda tmp: _save_npy(tmp, np.asarray(ids, dtype=np.uint16)))
    return np.load(out, mmap_mode="r")


def heldout_bytes(paths: Iterable[Path], limit: int) -> bytes:
    """The first ``limit`` UTF-8 bytes of the held-out documents (joined by newlines), cut at a
    character boundary: the text that bits per byte are measured on."""
    data = "\n".join(read_texts(paths)).encode("utf-8")[:limit]
    return data.decode("utf-8", errors="ignore").encode("utf-8")


@dataclass(frozen=True)
class Batches:
    """Random training windows of ``ctx_len + 1`` tokens, ``batch_size`` per step, decided by step."""

    tokens: np.ndarray
    ctx_len: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        if len(self.tokens) < self.ctx_len + 2:
            raise ValueError(f"the training text has {len(self.tokens)} tokens, fewer than ctx_len + 2 = "
                             f"{self.ctx_len + 2}; add text or lower ctx_len")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each [batch_size, ctx_len], for training step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.ctx_len - 1, size=self.batch_size)
        windows = np.stack([np.asarray(self.tokens[s:s + self.ctx_len + 1], dtype=np.int64) for s in starts])
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npy" to the temp name
        np.save(f, array)
