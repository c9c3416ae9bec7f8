"""Int8 weight matrices: what the ``i8`` of a strategy string (``cuda fp16i8``) stores.

Each matrix ``W`` [O, K] of a quantized layer is kept as int8 ``q`` with one fp32 scale per output row,
``W[o] ~ q[o] * scale[o]`` with ``scale[o] = max|W[o]| / 127`` (symmetric, per channel). A weight is off by
at most half a step, ``scale[o] / 2``. The products run in compiled code that reads the int8 values
(:func:`docstream.kernels.dispatch.linear_i8`); no fp32 copy of the matrix is kept. The embedding table is
stored the same way, and a lookup widens only the rows it gathers. The layer norms, the token-shift mixes,
the decays and RWKV-7's low-rank matrices stay in floating point: together they are a few percent of the
weights.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from docstream.kernels.dispatch import linear_i8
from docstream.model.base import pad_rows

#: products with at least this many rows get them padded like docstream.model.base.matmul does
#: (:func:`~docstream.model.base.pad_rows`; the BLAS form of the CPU kernel); fewer rows are computed one by
#: one, independently of each other
_PAD_FROM_ROWS = 16


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``weight`` [O, K] as (int8 [O, K], fp32 scale [O]) with ``weight[o] ~ q[o] * scale[o]``."""
    w = weight.detach().float()
    scale = torch.maximum(w.amax(dim=1), -w.amin(dim=1)) / 127.0  # max |w| per row, without an |w| copy
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = (w / scale[:, None]).round_().clamp_(-127, 127)  # one fp32 temporary per matrix
    return q.to(torch.int8), scale


class Int8Linear(nn.Module):
    """A bias-free linear layer whose weight [out, in] is stored as int8 with a scale per output row.

    Its ``state_dict`` holds ``weight_i8`` and ``scale`` (not the BlinkDL ``weight``): a quantized model
    is for inference; :func:`docstream.model.load_model` builds it from the float checkpoint."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_i8", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_features, dtype=torch.float32))
        self.backend = "auto"

    def set_backend(self, backend: str) -> None:
        self.backend = backend

    def dequantized(self) -> Tensor:
        """The weight the int8 values stand for, [out, in] fp32 (for checks; the forward never makes it)."""
        return self.weight_i8.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        if rows >= _PAD_FROM_ROWS:  # row results then do not depend on how many rows share the product
            flat = pad_rows(flat)
        out = linear_i8(flat, self.weight_i8, self.scale, self.backend)[:rows]
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """An embedding table [V, C] stored as int8 with a scale per row: a lookup widens only the rows it
    gathers, into ``dtype``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.register_buffer("weight_i8", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(num_embeddings, dtype=torch.float32))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, T] -> [B, T, C] in ``dtype``."""
        return (self.weight_i8[tokens].float() * self.scale[tokens].unsqueeze(-1)).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def quantized_module_names(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Names of the ``nn.Linear`` and ``nn.Embedding`` modules of ``model`` under the given name prefixes
    (``blocks.3.``, ``head``, ``emb``): the matrices an ``i8`` strategy stage quantizes."""
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Embedding)) and any(name.startswith(p) for p in prefixes)]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``: the memory its weights take."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
