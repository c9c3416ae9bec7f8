"""Checkpoints in Hugging Face's file layouts: a folder (``config.json`` beside ``model.safetensors``, shards
listed by ``model.safetensors.index.json``, or ``pytorch_model.bin`` and its shards) or a single
``.safetensors`` file. They are read into a state dict, and RWKV tensors in a Hugging Face naming are given
BlinkDL's names, so that one loader builds every model:

* RWKV-7 in fla's ``RWKV7ForCausalLM`` naming (:mod:`docstream.model.formats.hf_rwkv7`);
* RWKV-4 in transformers' ``RwkvForCausalLM`` naming (:mod:`docstream.model.formats.hf_rwkv4`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from docstream.checksum import sha256_file
from docstream.model.formats import hf_rwkv4, hf_rwkv7

if TYPE_CHECKING:  # torch is imported where tensors are read: fingerprints need no torch
    from torch import Tensor

__all__ = ["WEIGHT_FILES", "checkpoint_files", "checkpoint_fingerprint", "checkpoint_format", "is_hf_path",
           "read_hf_files", "to_blinkdl"]

#: what a model folder may hold, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: each layout's key marker and converter, by the name errors give it
LAYOUTS = {"RWKV-7 (fla RWKV7ForCausalLM)": hf_rwkv7, "RWKV-4 (transformers RwkvForCausalLM)": hf_rwkv4}


def is_hf_path(path: Path) -> bool:
    """Whether ``path`` is a folder or a ``.safetensors`` file (read here, not by ``torch.load``)."""
    return path.is_dir() or path.suffix == ".safetensors"


def checkpoint_files(path: Path) -> list[Path]:
    """The files a checkpoint at ``path`` is made of: the file itself, or the folder's weight files (every
    shard an index names) and its ``config.json`` if present. ``ValueError`` for a folder without weights."""
    if not path.is_dir():
        return [path]
    found = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if found is None:
        raise ValueError(f"folder {str(path)!r} holds no model weights: expected one of {', '.join(WEIGHT_FILES)} "
                         f"(a Hugging Face model folder) or pass a BlinkDL .pth file")
    files = [found]
    if found.name.endswith(".index.json"):
        files = [path / shard for shard in sorted(set(_index(found).values()))]
    config = path / "config.json"
    return files + ([config] if config.is_file() else [])


def checkpoint_format(path: Path) -> str:
    """How the checkpoint at ``path`` is stored, in words (for ``docstream info``)."""
    if path.is_dir():
        return f"Hugging Face model folder ({', '.join(f.name for f in checkpoint_files(path))})"
    return "safetensors file" if path.suffix == ".safetensors" else "PyTorch file (BlinkDL .pth or pytorch_model.bin)"


def checkpoint_fingerprint(path: str | Path) -> str:
    """The identity snapshots record of the model that made them: the sha256 of a checkpoint file, or for a
    model folder the sha256 of its files' names and sha256s (weights, every shard, ``config.json``)."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in checkpoint_files(path):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def read_hf_files(path: Path) -> dict[str, Tensor]:
    """The tensors of the checkpoint at ``path`` (an existing folder or ``.safetensors`` file), in their own
    names."""
    sd: dict[str, Tensor] = {}
    for file in checkpoint_files(path):
        if file.name == "config.json":
            continue
        if not file.is_file():
            raise ValueError(f"{str(path)!r}: shard {file.name!r} named by its index is missing")
        sd.update(_read_weights(file))
    return sd


def to_blinkdl(sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """``sd`` with BlinkDL's names: converted from a Hugging Face RWKV layout, else unchanged (a BlinkDL state
    dict, or something that is not RWKV, which the loader then reports)."""
    for name, layout in LAYOUTS.items():
        if any(layout.MARKER.match(key) for key in sd):
            return layout.to_blinkdl(sd, f"{source} ({name} layout)")
    return sd


def _index(path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable shard index ({type(err).__name__}: {err})") from err
    if not isinstance(weight_map, dict):
        raise ValueError(f"{str(path)!r} is not a readable shard index (its weight_map is not a mapping)")
    return weight_map


def _read_weights(file: Path) -> dict[str, Tensor]:
    if file.suffix != ".safetensors":  # pytorch_model.bin and its shards: read as any PyTorch file is
        from docstream.model.formats.torch_files import read_state_dict_file

        return read_state_dict_file(file)
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises several types for a damaged file; report them alike
        raise ValueError(f"{str(file)!r} is not a readable weights file ({type(err).__name__}: {err}); "
                         f"expected complete safetensors") from err
