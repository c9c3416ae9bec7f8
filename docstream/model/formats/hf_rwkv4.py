"""RWKV-4 in transformers' layout (``RwkvForCausalLM``) as a BlinkDL state dict.

transformers' ``convert_rwkv_checkpoint_to_hf.py`` renames BlinkDL's tensors and keeps their values and
shapes: ``emb`` -> ``rwkv.embeddings``, ``blocks.0.ln0`` -> ``rwkv.blocks.0.pre_ln``, ``att`` ->
``attention``, ``ffn`` -> ``feed_forward``, ``time_mix_k/v/r`` -> ``time_mix_key/value/receptance``,
``ln_out`` -> ``rwkv.ln_out``; ``head`` stays. This maps them back.

transformers halves ``attention.output`` and ``feed_forward.value`` every ``rescale_every`` layers in
memory while a model is in eval mode, and restores them for training, so saved files hold the
original weights. A file saved while they were halved cannot be told apart from the weights alone.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from docstream.model.config import ModelConfig

__all__ = ["MARKER", "from_blinkdl", "hf_config", "to_blinkdl"]

#: a key only this layout has
MARKER = re.compile(r"^(rwkv\.)?blocks\.0\.attention\.time_decay$")

_PARTS = {"attention": "att", "feed_forward": "ffn", "pre_ln": "ln0", "ln1": "ln1", "ln2": "ln2"}
_MIX = {"time_mix_key": "time_mix_k", "time_mix_value": "time_mix_v", "time_mix_receptance": "time_mix_r"}


def to_blinkdl(sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """BlinkDL's RWKV-4 state dict from transformers'; ``ValueError`` naming a key it cannot place."""
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        name = key.removeprefix("rwkv.")
        if name in ("head.weight", "ln_out.weight", "ln_out.bias"):
            out[name] = tensor
        elif name == "embeddings.weight":
            out["emb.weight"] = tensor
        elif found := re.match(r"^blocks\.(\d+)\.(\w+)\.(.+)$", name):
            layer, part, rest = found.groups()
            if part not in _PARTS:
                raise ValueError(f"{source}: tensor {key!r} has no place in an RWKV-4 model (transformers layout)")
            out[f"blocks.{layer}.{_PARTS[part]}.{_MIX.get(rest, rest)}"] = tensor
        else:
            raise ValueError(f"{source}: tensor {key!r} has no place in an RWKV-4 model (transformers layout)")
    if "head.weight" not in out and "emb.weight" in out:  # tie_word_embeddings
        out["head.weight"] = out["emb.weight"]
    return out


def from_blinkdl(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' ``RwkvForCausalLM`` state dict from BlinkDL's (the inverse of :func:`to_blinkdl`)."""
    parts = {v: k for k, v in _PARTS.items()}
    mix = {v: k for k, v in _MIX.items()}
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        if key == "head.weight":
            out[key] = tensor
        elif key == "emb.weight":
            out["rwkv.embeddings.weight"] = tensor
        elif key.startswith("ln_out."):
            out["rwkv." + key] = tensor
        else:
            _, layer, part, rest = key.split(".", 3)
            out[f"rwkv.blocks.{layer}.{parts[part]}.{mix.get(rest, rest)}"] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(config: ModelConfig) -> dict:
    """transformers' ``config.json`` for a model of ``config`` (``"model_type": "rwkv"``)."""
    return {"architectures": ["RwkvForCausalLM"], "model_type": "rwkv", "vocab_size": config.vocab_size,
            "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer,
            "attention_hidden_size": config.dim_att, "intermediate_size": config.dim_ffn,
            "context_length": 1024, "layer_norm_epsilon": 1e-5, "rescale_every": 6, "bos_token_id": 0,
            "eos_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float32"}
