"""Query vectors without torch: an RWKV-7 embedder's pooled hidden states, computed in numpy.

A CLI search must answer in well under a second, and ``import torch`` alone takes 2.5-4 s on a small
machine. :class:`QueryEncoder` reads the checkpoint with :mod:`docstream.model.pth_numpy` and runs
:class:`docstream.model.numpy_v7.NumpyRWKV7`, pooling exactly as
:func:`docstream.model.embedding.embed_tokens` does with torch (first ``max_tokens`` tokens, then
``eos_token`` for eos pooling; ``mean`` averages over the passage's tokens). Importing this module
and encoding import neither torch nor :mod:`docstream.model.embedding`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from docstream.model.numpy_v7 import NumpyRWKV7, rwkv_version
from docstream.model.pth_numpy import load_pth

POOLINGS = ("mean", "eos")
#: texts encoded together: more saves little (a step's per-call overhead is already shared by 64) and
#: costs memory (per text a state of H*N*N floats, 64 KiB at C = 256, N = 64, and its positions' activations)
BATCH = 64


class QueryEncoder:
    """Embeds short texts with an RWKV-7 embedder, in numpy.

    ``spec``: any object with the attributes of ``docstream.model.embedding.EmbedderSpec`` that matter
    here: ``pooling`` ("mean" or "eos"), ``eos_token``, ``tokenizer`` (a tokenizer file -- relative
    paths are taken beside the checkpoint -- or a bundled vocabulary's name) and optionally
    ``max_tokens`` and ``dimension``. ``ValueError`` for a checkpoint that is not RWKV-7 (its queries
    must be embedded with torch: ``docstream.model.embedding.embed_tokens``) or a spec that does not fit it.
    """

    def __init__(self, model_path: str | Path, spec: Any):
        from docstream.tokenizer import load_tokenizer  # imports no torch

        self.model_path, self.spec = Path(model_path), spec
        self.pooling = str(spec.pooling)
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {spec.pooling!r} for an embedder; expected one of {', '.join(POOLINGS)}")
        weights = load_pth(self.model_path, skip={"head.weight"})  # an embedder reads no logits
        version = rwkv_version(weights)
        if version != "7":
            raise ValueError(f"{str(self.model_path)!r} is an RWKV-{version} checkpoint; the torch-free query path "
                             f"reads RWKV-7 only, so its queries must be embedded with torch "
                             f"(docstream.model.embedding.embed_tokens)")
        self.model = NumpyRWKV7(weights)
        self.eos_token = int(spec.eos_token)
        self.max_tokens = getattr(spec, "max_tokens", None)
        dimension = getattr(spec, "dimension", None)
        if dimension is not None and dimension != self.model.n_embd:
            raise ValueError(f"the embedder spec says dimension {dimension} but {str(self.model_path)!r} is "
                             f"{self.model.n_embd} wide; correct 'dimension' in its embedder.json")
        if self.pooling == "eos" and not 0 <= self.eos_token < self.model.vocab_size:
            raise ValueError(f"eos_token {self.eos_token} is outside the model's vocabulary "
                             f"[0, {self.model.vocab_size})")
        tokenizer = Path(str(spec.tokenizer))
        if not tokenizer.is_absolute() and (self.model_path.parent / tokenizer).is_file():
            tokenizer = self.model_path.parent / tokenizer
        self.tokenizer = load_tokenizer(tokenizer if tokenizer.is_file() else str(spec.tokenizer))
        self.weights = None
        if self.pooling == "mean" and getattr(spec, "token_weights", None) is not None:
            from docstream.model.embedding import token_weights  # imports no torch

            self.weights = token_weights(spec, self.model.vocab_size)

    @property
    def dimension(self) -> int:
        return self.model.n_embd

    def _mean(self, hidden: np.ndarray, ids: list[int]) -> np.ndarray:
        """Mean pooling of one text's hidden states [T, C], weighted by its tokens' weights when the spec has them."""
        if self.weights is None:
            return hidden.mean(axis=0)
        weights = self.weights[ids]
        return (weights @ hidden) / max(float(weights.sum()), 1e-12)

    def tokens(self, text: str) -> list[int]:
        """The ids the model reads for ``text``: its first ``max_tokens`` tokens, then eos if pooled at it."""
        ids = [int(t) for t in self.tokenizer.encode(text)]
        if self.max_tokens is not None:
            ids = ids[:self.max_tokens]
        return ids + [self.eos_token] if self.pooling == "eos" else ids

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), C]`` float32 vectors, unnormalized: the mean of each text's final hidden states
        (after ``ln_out``), or the hidden state at the appended eos token. Each text starts from the zero
        state. ``ValueError`` for a text with no tokens under mean pooling.

        Texts run :data:`BATCH` at a time through :meth:`NumpyRWKV7.hidden_batch` (one text alone costs
        ~5-30 ms, mostly numpy's per-call overhead, which a batch shares), sorted by length so that a
        batch's texts end at nearly the same step (the recurrence runs as long as the longest)."""
        if isinstance(texts, str):
            raise ValueError("encode takes a list of texts; wrap a single query as [text]")
        token_lists = [self.tokens(text) for text in texts]
        for i, ids in enumerate(token_lists):
            if not ids:
                raise ValueError(f"text {i} ({texts[i]!r}) has no tokens; mean pooling needs at least one")
        out = np.zeros((len(texts), self.model.n_embd), dtype=np.float32)
        by_length = sorted(range(len(texts)), key=lambda i: len(token_lists[i]))
        for start in range(0, len(by_length), BATCH):
            batch = by_length[start:start + BATCH]
            for i, hidden in zip(batch, self.model.hidden_batch([token_lists[i] for i in batch])):
                out[i] = hidden[-1] if self.pooling == "eos" else self._mean(hidden, token_lists[i])
        return out
