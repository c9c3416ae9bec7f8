"""Passage embeddings: how an embedder checkpoint turns one passage into one vector.

An embedder is an ordinary BlinkDL-layout ``.pth`` plus a sidecar ``<model stem>.embedder.json`` (or
``embedder.json``) in the same folder, read into :class:`EmbedderSpec`::

    {"format": 1, "pooling": "mean" | "eos", "eos_token": 0, "tokenizer": "tokenizer.json",
     "dimension": 256, "max_tokens": 1024}

A passage is embedded on its own: the state starts from zero, the passage's first ``max_tokens`` tokens
are read, and the final hidden states (after ``ln_out``: what the LM head reads) are pooled:

* ``mean``: their average over the passage's tokens;
* ``eos``: ``eos_token`` is appended and the hidden state at it is the vector.

Vectors come back unnormalized; the index L2-normalizes them (cosine similarity).

The ``eos`` convention is that of EmbeddingRWKV (the ``rwkv-emb`` package, ``rwkv_emb/model.py``):

* its tokenizer appends id 65535 (the last id of the World vocabulary) when asked to (``add_eos=True``),
  and its README insists every passage end with it;
* the embedding is the RWKV-7 output at the positions holding 65535 (a masked mean over every such
  position, which for one appended end token is the output at that token). The output is the
  ``n_embd``-wide final hidden state, not logits, which a small head then reads;
* that head is extra weights: its checkpoints are *not* BlinkDL's layout. The RWKV-7 weights sit under
  the prefix ``rwkv.`` and the head under ``head.``: a ``MultiTaskHead`` of three residual MLPs
  (``head.{cls,sts,retr}_head.fc1.weight``, ``.fc2.weight``, ``.norm.weight``, ``.norm.bias``, each
  ``LayerNorm(x + fc2(relu(fc1(x))))``; retrieval uses ``retr_head``). Optional vision weights sit
  under ``vit.`` and ``proj.``;
* nothing normalizes the vector inside the model (callers take cosine similarities);
* batches are padded on the left with token 0 to a common length (padding tokens then run through the
  recurrence before the passage: the model was trained that way; docstream pads on the right instead,
  which in an RNN leaves every earlier position exactly as it was).

So ``pooling: "eos"`` with ``eos_token: 65535`` reproduces its pooling on a BlinkDL-layout RWKV-7 that
was trained with it; reading EmbeddingRWKV's own files would also need the ``rwkv.`` prefix stripped and
the ``retr_head`` applied, which this format does not describe.
"""
from __future__ import annotations

import json
from functools import lru_cache
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from docstream.files import atomic_write_bytes
from docstream.tokenizer.loader import bundled_vocabularies

if TYPE_CHECKING:  # the spec functions are used on the query path, which must not import torch
    from torch import Tensor

    from docstream.model.base import RWKVModel

POOLINGS = ("mean", "eos")
#: the end-of-text id EmbeddingRWKV appends (the World vocabulary's last id)
RWKV_EMB_EOS = 65535
SPEC_FORMAT = 1


class EmbedderSpec(BaseModel):
    """How a checkpoint embeds a passage (the ``embedder.json`` beside it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = Field(SPEC_FORMAT, description="version of this file's layout")
    pooling: Literal["mean", "eos"] = Field(description="mean of the final hidden states, or the one at eos")
    eos_token: int = Field(0, ge=0, description="token appended to each passage for eos pooling")
    tokenizer: str = Field(min_length=1, description="tokenizer file, relative to the json or absolute")
    dimension: int = Field(ge=1, description="vector width: the model's n_embd")
    max_tokens: int = Field(1024, ge=1, description="passage tokens read (the rest is cut off)")
    token_weights: str | None = Field(None, description="mean pooling: a .npy of one weight per token id (relative "
                                                        "to the json or absolute); None weighs tokens equally")


def spec_paths(model_path: str | Path) -> tuple[Path, Path]:
    """Where the sidecar of ``model_path`` may be, in the order looked at."""
    model = Path(model_path)
    return model.with_name(f"{model.stem}.embedder.json"), model.with_name("embedder.json")


def read_embedder_spec(model_path: str | Path) -> EmbedderSpec | None:
    """The spec beside ``model_path`` (``<stem>.embedder.json``, else ``embedder.json``), or None when
    there is none. Its ``tokenizer`` comes back as an absolute path (or a bundled vocabulary's bare
    name), since a relative one means something only next to the json."""
    path = next((p for p in spec_paths(model_path) if p.is_file()), None)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable embedder spec ({err}); fix it or delete it") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object like {{\"format\": 1, \"pooling\": \"mean\", ...}}")
    try:
        spec = EmbedderSpec(**data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{path} is not a valid embedder spec: {problems}") from None
    if spec.token_weights is not None:
        weights = Path(spec.token_weights)
        weights = weights if weights.is_absolute() else (path.parent / weights).resolve()
        if not weights.is_file():
            raise ValueError(f"{path} names the token weights {spec.token_weights!r}, but {weights} does not exist; "
                             f"put the file there or correct the path")
        spec = spec.model_copy(update={"token_weights": str(weights)})
    tokenizer = Path(spec.tokenizer)
    beside = tokenizer if tokenizer.is_absolute() else (path.parent / tokenizer).resolve()
    if beside.is_file():
        return spec.model_copy(update={"tokenizer": str(beside)})
    if spec.tokenizer in bundled_vocabularies():
        return spec
    raise ValueError(f"{path} names the tokenizer {spec.tokenizer!r}, but {beside} does not exist; "
                     f"put the tokenizer there or correct the path")


@lru_cache(maxsize=8)
def _read_weights(path: str) -> np.ndarray:
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"token weights {path} cannot be read as a .npy array ({err})") from err
    if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"token weights {path} must be one finite, non-negative weight per token id "
                         f"(a 1-d array); got shape {weights.shape}")
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def token_weights(spec: EmbedderSpec, vocab_size: int | None = None) -> np.ndarray | None:
    """The per-token weights of mean pooling ([V] float32, read once per file), or None for a plain mean.
    ``vocab_size``: the model's, which the weights must cover."""
    if spec.pooling != "mean" or spec.token_weights is None:
        return None
    weights = _read_weights(str(spec.token_weights))
    if vocab_size is not None and len(weights) != vocab_size:
        raise ValueError(f"token weights {spec.token_weights} hold {len(weights)} weights, but the model's "
                         f"vocabulary has {vocab_size} ids")
    return weights


def write_embedder_spec(path: str | Path, spec: EmbedderSpec) -> Path:
    """Write ``spec`` to ``path`` atomically (whole or absent); returns ``path``."""
    path = Path(path)
    atomic_write_bytes(path, (spec.model_dump_json(indent=2) + "\n").encode())
    return path


def check_fits(model: RWKVModel, spec: EmbedderSpec) -> None:
    """Refuse a spec that does not describe ``model``."""
    if spec.dimension != model.config.n_embd:
        raise ValueError(f"the embedder spec says dimension {spec.dimension} but the model is "
                         f"{model.config.n_embd} wide; correct 'dimension' in its embedder.json")
    token_weights(spec, model.config.vocab_size)
    if spec.pooling == "eos" and spec.eos_token >= model.config.vocab_size:
        raise ValueError(f"eos_token {spec.eos_token} is outside the model's vocabulary "
                         f"[0, {model.config.vocab_size})")


def passage_tokens(tokens: Sequence[int], spec: EmbedderSpec) -> list[int]:
    """The tokens the model reads for one passage: the first ``max_tokens``, then eos if pooled at it."""
    ids = [int(t) for t in tokens[:spec.max_tokens]]
    return ids + [spec.eos_token] if spec.pooling == "eos" else ids


def pad_passages(token_lists: Sequence[Sequence[int]], spec: EmbedderSpec) -> tuple[Tensor, Tensor]:
    """Passages as one right-padded batch: (tokens [B, T] LongTensor, lengths [B]), for :func:`pooled`.
    Padding goes after each passage, so it never changes the hidden states of the passage's tokens."""
    import torch

    rows = [passage_tokens(t, spec) for t in token_lists]
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"passage {i} has no tokens; mean pooling needs at least one")
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    padded = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return padded, lengths


def pooled(model: RWKVModel, padded_tokens: Tensor, lengths: Tensor, spec: EmbedderSpec) -> Tensor:
    """Embeddings [B, C] (fp32, unnormalized) of right-padded passages ``padded_tokens`` [B, T] whose
    first ``lengths`` [B] positions are real (eos included). Differentiable when grad is enabled."""
    import torch

    hidden = model.hidden_train(padded_tokens).float()  # [B, T, C]
    lengths = lengths.to(hidden.device)
    if spec.pooling == "eos":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    valid = (torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]).to(hidden.dtype)  # [B, T]
    weights = token_weights(spec)
    if weights is not None:  # a weighted mean: frequent tokens count for less
        valid = valid * torch.tensor(weights, device=hidden.device)[padded_tokens.to(hidden.device)]
    return (hidden * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp_min(1e-12)


def pooled_lists(model: RWKVModel, token_lists: Sequence[Sequence[int]], spec: EmbedderSpec,
                 batch_size: int = 16) -> Tensor:
    """Embeddings [n, C] (fp32, unnormalized) of tokenized passages, in the order given: the passages run
    in length-sorted batches of ``batch_size``, so each batch is padded only to its own longest passage.
    Differentiable when grad is enabled (what training uses); :func:`embed_tokens` is the no-grad form."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if spec.pooling == "mean":
        empty = next((i for i, t in enumerate(token_lists) if len(t) == 0), None)
        if empty is not None:
            raise ValueError(f"passage {empty} has no tokens; mean pooling needs at least one")
    if not token_lists:
        return torch.zeros(0, spec.dimension, device=model.device)
    order = sorted(range(len(token_lists)), key=lambda i: min(len(token_lists[i]), spec.max_tokens))
    parts = []
    for start in range(0, len(order), batch_size):
        padded, lengths = pad_passages([token_lists[i] for i in order[start:start + batch_size]], spec)
        parts.append(pooled(model, padded, lengths, spec))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts)[inverse.to(parts[0].device)]


def embed_tokens(model: RWKVModel, token_lists: Sequence[Sequence[int]], spec: EmbedderSpec,
                 batch_size: int = 16) -> np.ndarray:
    """Embeddings [n, C] float32 (unnormalized, no grad) of already tokenized passages, each on its own.

    Passages are sorted by length into batches, so little padding is computed; the result is in the
    order given and does not depend on ``batch_size`` beyond float rounding."""
    import torch

    check_fits(model, spec)
    with torch.no_grad():
        return pooled_lists(model, token_lists, spec, batch_size).cpu().numpy().astype(np.float32, copy=False)
