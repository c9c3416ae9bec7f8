"""``docstream convert``: a checkpoint written in another layout, with the same logits.

* ``--to pth``: BlinkDL's ``.pth`` (what the official ``rwkv`` package and BlinkDL's code load), from any
  checkpoint docstream reads, e.g. a Hugging Face folder.
* ``--to hf``: a Hugging Face model folder (``model.safetensors`` and ``config.json``): RWKV-7 in fla's
  ``RWKV7ForCausalLM`` layout, RWKV-4 in transformers' ``RwkvForCausalLM`` layout.
* ``--to gguf``: one GGUF file of RWKV-7 for llama.cpp (:mod:`docstream.model.formats.gguf_rwkv7`), float32, with the
  World vocabulary.

The checkpoint is first built into a model, so a damaged or non-finite one is refused before anything is
written. The output appears whole or not at all: a file is written to a temp name and renamed, a folder is
filled under a temp name and renamed. An existing output is never overwritten.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from docstream.files import atomic_write, disk_full, fsync_dir, no_space, temp_path
from docstream.model.formats import hf_rwkv4, hf_rwkv7
from docstream.model.loader import build_model, read_checkpoint

__all__ = ["HF_LAYOUTS", "TARGETS", "convert_checkpoint"]

TARGETS = ("hf", "pth", "gguf")
#: the Hugging Face layout each version is exported in
HF_LAYOUTS = {"7": hf_rwkv7, "4": hf_rwkv4}


def convert_checkpoint(source: str | Path, out: str | Path, to: str, tokenizer: str | Path | None = None) -> Path:
    """Write the checkpoint at ``source`` to ``out`` in layout ``to`` ("hf", "pth" or "gguf"); returns ``out``.
    ``tokenizer``: the World vocabulary a GGUF file carries (default: docstream's bundled copy)."""
    source, out = Path(source), Path(out)
    if to not in TARGETS:
        raise ValueError(f"unknown target layout {to!r}; expected one of {', '.join(TARGETS)}")
    if tokenizer is not None and to != "gguf":
        raise ValueError(f"a tokenizer only applies to --to gguf (--to {to} carries no vocabulary)")
    if out.exists():
        raise FileExistsError(f"{str(out)!r} already exists; choose a new output path (nothing is overwritten)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder of the output, {str(out.parent)!r}, does not exist")
    sd = read_checkpoint(source)
    config = build_model(sd, source=repr(str(source))).config  # refuses damaged, non-finite or unknown weights
    if to == "pth":
        atomic_write(out, lambda tmp: torch.save(sd, tmp))
        return out
    if to == "gguf":
        _write_gguf(out, sd, config, tokenizer, source)
        return out
    layout = HF_LAYOUTS.get(config.version)
    if layout is None:
        raise ValueError(f"RWKV-{config.version} has no Hugging Face layout here; docstream exports RWKV-7 (fla) and "
                         f"RWKV-4 (transformers). Use --to pth")
    tensors = layout.from_blinkdl(sd)
    settings = layout.hf_config(config)
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    settings["torch_dtype"] = str(max(dtypes, key=lambda d: torch.finfo(d).bits)).removeprefix("torch.")
    _write_folder(out, tensors, settings)
    return out


def _write_gguf(out: Path, sd: dict, config, tokenizer: str | Path | None, source: Path) -> None:
    from docstream.model.formats.gguf_rwkv7 import write_gguf
    from docstream.tokenizer.base import read_vocab_bytes
    from docstream.tokenizer.world import default_world_vocab_path, looks_like_world_vocab, parse_world_vocab

    if config.version != "7":
        raise ValueError(f"GGUF export is for RWKV-7 (llama.cpp's rwkv7 architecture); {str(source)!r} is "
                         f"RWKV-{config.version}. Use --to hf or --to pth")
    vocab = Path(tokenizer) if tokenizer is not None else default_world_vocab_path()
    path, data = read_vocab_bytes(vocab, "World vocabulary", "pass --tokenizer with the model's vocabulary file")
    if not looks_like_world_vocab(path):
        raise ValueError(f"{str(path)!r} is not a World vocabulary (rwkv_vocab_*.txt); a GGUF file of RWKV-7 "
                         f"carries llama.cpp's rwkv tokenizer, which only the World vocabulary fills")
    atomic_write(out, lambda tmp: write_gguf(tmp, sd, config, parse_world_vocab(data, str(path)), source.stem))


def _write_folder(out: Path, tensors: dict, settings: dict) -> None:
    from safetensors.torch import save_file

    seen: set[int] = set()
    for name, t in tensors.items():  # safetensors stores no shared tensors: a tied head gets its own copy
        if t.data_ptr() in seen:
            tensors[name] = t.clone()
        seen.add(t.data_ptr())
    tmp = temp_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if no_space(err):
            raise disk_full(out, err) from err
        raise
    fsync_dir(out.parent)
