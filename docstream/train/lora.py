"""LoRA: low-rank adapters on an RWKV model's matrices, trained while the model itself stays frozen.

A target matrix ``W`` ``[out, in]`` becomes ``W + (alpha / rank) * B @ A`` with ``A`` ``[rank, in]`` (small
random values) and ``B`` ``[out, rank]`` (zeros, so training starts from the model as it is). Only ``A``
and ``B`` are trained: at the built-in model's shape, rank 8 on the six matrices of every block trains
about 3% of the parameters (``bench/bench_lora.py``).

The adapters wrap the weights through ``torch.nn.utils.parametrize``, so the model's own forward, its
compiled kernels included, runs unchanged. Every version's blocks are covered. The targets are
``nn.Linear`` modules whose names end with one of ``targets`` (``att.key``, ``ffn.value``...).

* :func:`adapter_state` / :func:`save_adapter` give the adapter on its own (``adapter.safetensors``), and
  :func:`write_adapter_spec` its ``adapter.json`` (the rank, alpha, targets and the base model's fingerprint).
* :func:`merged_state` gives BlinkDL's state dict with every adapter folded into its matrix, a plain
  ``.pth`` that the official ``rwkv`` package loads.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from docstream.files import atomic_write_bytes
from docstream.model.base import RWKVModel
from docstream.train.config import LORA_TARGETS

__all__ = ["DEFAULT_TARGETS", "LoRA", "add_lora", "adapter_state", "lora_parameters", "merged_state",
           "save_adapter", "write_adapter_spec"]

#: the matrices adapted by default: every block's attention projections and feed-forward matrices
DEFAULT_TARGETS = LORA_TARGETS


class LoRA(nn.Module):
    """The parametrization ``W -> W + scale * B @ A`` of one ``[out, in]`` weight."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.scale = alpha / rank
        bound = 1 / math.sqrt(in_features)  # nn.Linear's own init range, for A; B starts at zero
        self.A = nn.Parameter((torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight: Tensor) -> Tensor:
        return weight + (self.B @ self.A).to(weight.dtype) * self.scale


def add_lora(model: RWKVModel, rank: int, alpha: float, targets: tuple[str, ...] = DEFAULT_TARGETS,
             seed: int = 0) -> list[str]:
    """Freeze ``model`` and give each target matrix an adapter; returns the adapted modules' names.
    ``ValueError`` when no module matches ``targets``."""
    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("blocks.") and name.endswith(tuple(targets)):
            out_features, in_features = module.weight.shape
            adapter = LoRA(out_features, in_features, rank, alpha, g).to(module.weight.device)
            parametrize.register_parametrization(module, "weight", adapter)
            names.append(name)
    if not names:
        raise ValueError(f"no matrix of this RWKV-{model.config.version} model matches the LoRA targets "
                         f"{', '.join(targets)}; its blocks' matrices are named like "
                         f"{', '.join(_matrix_names(model)[:6])}")
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' trainable parameters (every ``A`` and ``B``)."""
    return [p for name, p in model.named_parameters() if name.endswith((".A", ".B")) and "parametrizations" in name]


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapters on their own: ``{module}.lora_A`` / ``{module}.lora_B`` per adapted module, on the CPU."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            lora = module.parametrizations.weight[0]
            out[f"{name}.lora_A"] = lora.A.detach().cpu().contiguous()
            out[f"{name}.lora_B"] = lora.B.detach().cpu().contiguous()
    return out


def merged_state(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """BlinkDL's state dict of ``model`` with every adapter folded into its matrix (in the model's own order)."""
    merged = {name: module.weight for name, module in model.named_modules()
              if parametrize.is_parametrized(module, "weight")}  # base + scale * B @ A
    out = {}
    for key, value in model.state_dict().items():
        owner, marker, _ = key.partition(".parametrizations.weight.")
        if marker:
            if key.endswith(".original"):
                out[f"{owner}.weight"] = merged[owner]
            continue
        out[key] = value
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}


def save_adapter(model: nn.Module, directory: Path) -> Path:
    """Write the adapters' weights, ``adapter.safetensors``, atomically; returns its path."""
    from safetensors.torch import save

    path = directory / "adapter.safetensors"
    atomic_write_bytes(path, save(adapter_state(model), metadata={"format": "pt"}))
    return path


def write_adapter_spec(model: nn.Module, directory: Path, settings: dict) -> None:
    """Write ``adapter.json`` atomically: ``settings`` (rank, alpha, base model...) and the adapted modules."""
    modules = sorted(name for name, m in model.named_modules() if parametrize.is_parametrized(m, "weight"))
    text = json.dumps(dict(settings, modules=modules), indent=2) + "\n"
    atomic_write_bytes(directory / "adapter.json", text.encode())


def _matrix_names(model: RWKVModel) -> list[str]:
    return sorted({name.split(".", 2)[2] for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and name.startswith("blocks.")})
