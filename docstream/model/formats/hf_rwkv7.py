"""RWKV-7 in fla's Hugging Face layout (``RWKV7ForCausalLM`` / ``RWKV7Model``) as a BlinkDL state dict.

Most RWKV-7 checkpoints on the Hugging Face hub are published in this layout: safetensors and a
``config.json`` with ``"model_type": "rwkv7"``, as fla's ``utils/convert_from_rwkv7.py`` writes them from
BlinkDL's ``.pth``. The mapping back, per layer ``i`` (``model.layers.i.`` -> ``blocks.i.``):

* ``pre_norm`` / ``attn_norm`` / ``ffn_norm`` -> ``ln0`` / ``ln1`` / ``ln2``;
* ``attn.r_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` / ``g_norm`` -> ``att.receptance`` / ``key`` /
  ``value`` / ``output`` / ``ln_x``;
* the low-rank branches ``attn.{w,a,v,g}_lora.lora.{0,2}`` are BlinkDL's ``{w,a,v,g}1`` and ``{w,a,v,g}2``
  **transposed** (``nn.Linear`` stores ``[out, in]``), and ``lora.2.bias`` is ``{w,a,v}0``;
* vectors BlinkDL stores as ``[1, 1, C]`` (token-shift mixes, ``k_k``, ``k_a``, the ``*0`` biases) may be
  squeezed to ``[C]``: they are given their ``[1, 1, C]`` shape back;
* ``model.embeddings`` / ``model.norm`` / ``lm_head`` -> ``emb`` / ``ln_out`` / ``head``;
* layer 0 has no ``v_lora``, because its value residual is unused: BlinkDL's ``blocks.0.att.v0/v1/v2`` are
  absent, and docstream does not need them.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from docstream.model.config import ModelConfig

__all__ = ["MARKER", "from_blinkdl", "hf_config", "to_blinkdl"]

#: a key only this layout has (with or without the ``model.`` prefix of RWKV7ForCausalLM)
MARKER = re.compile(r"^(model\.)?layers\.0\.attn\.r_k$")

_TOP = {"embeddings.weight": "emb.weight", "norm.weight": "ln_out.weight", "norm.bias": "ln_out.bias"}
_NORMS = {"pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2"}
_PROJ = {"r_proj": "receptance", "k_proj": "key", "v_proj": "value", "o_proj": "output", "g_norm": "ln_x"}
_LORA = re.compile(r"^([wavg])_lora\.lora\.([02])\.(weight|bias)$")
_VECTORS = re.compile(r"^(att\.(x_[rwkvag]|k_k|k_a|[wav]0)|ffn\.x_k)$")


def to_blinkdl(sd: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """BlinkDL's RWKV-7 state dict from fla's; ``ValueError`` naming a key it cannot place."""
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        name = key.removeprefix("model.")
        if key == "lm_head.weight":
            out["head.weight"] = tensor
            continue
        if name in _TOP:
            out[_TOP[name]] = tensor
            continue
        found = re.match(r"^layers\.(\d+)\.(\w+)\.(.+)$", name)
        if not found:
            raise _misplaced(key, source)
        layer, part, rest = found.groups()
        if part in _NORMS:
            out[f"blocks.{layer}.{_NORMS[part]}.{rest}"] = tensor
            continue
        if part == "ffn":
            local = f"ffn.{rest}"
        elif part == "attn":
            local = "att." + _attention_name(rest, key, source)
            if _LORA.match(rest) and rest.endswith(".weight"):
                tensor = tensor.t()  # nn.Linear's [out, in] -> BlinkDL's [in, out]
        else:
            raise _misplaced(key, source)
        if _VECTORS.match(local):
            tensor = tensor.reshape(1, 1, -1)
        out[f"blocks.{layer}.{local}"] = tensor.contiguous()
    if "head.weight" not in out and "emb.weight" in out:  # tie_word_embeddings: the head is the embedding
        out["head.weight"] = out["emb.weight"]
    return out


def _misplaced(key: str, source: str) -> ValueError:
    return ValueError(f"{source}: tensor {key!r} has no place in an RWKV-7 model (fla layout)")


def _attention_name(rest: str, key: str, source: str) -> str:
    lora = _LORA.match(rest)
    if lora:
        branch, index, kind = lora.groups()
        if kind == "bias":
            if index != "2" or branch == "g":
                raise _misplaced(key, source)
            return f"{branch}0"
        return f"{branch}{1 if index == '0' else 2}"
    head, _, tail = rest.partition(".")
    if head in _PROJ:
        return f"{_PROJ[head]}.{tail}"
    return rest


#: BlinkDL's [1, 1, C] tensors that fla keeps as [1, 1, C] parameters (the others it holds as [C])
_KEPT_3D = re.compile(r"^att\.x_[rwkvag]$")
_BLINK_LORA = re.compile(r"^att\.([wavg])([012])$")


def from_blinkdl(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """fla's ``RWKV7ForCausalLM`` state dict from BlinkDL's (the inverse of :func:`to_blinkdl`; layer 0's
    unused ``v0/v1/v2`` are left out, as fla's layer 0 has no value-residual branch)."""
    out: dict[str, Tensor] = {}
    top = {v: k for k, v in _TOP.items()}
    norms = {v: k for k, v in _NORMS.items()}
    proj = {v: k for k, v in _PROJ.items()}
    for key, tensor in sd.items():
        if key == "head.weight":
            out["lm_head.weight"] = tensor
            continue
        if key in top:
            out["model." + top[key]] = tensor
            continue
        _, layer, local = key.split(".", 2)
        module, _, rest = local.partition(".")
        base = f"model.layers.{layer}."
        if module in norms:
            out[base + f"{norms[module]}.{rest}"] = tensor
        elif module == "ffn":
            out[base + local] = tensor.flatten() if rest == "x_k" else tensor
        elif lora := _BLINK_LORA.match(local):
            branch, index = lora.groups()
            if layer == "0" and branch == "v":
                continue
            target = {"0": "lora.2.bias", "1": "lora.0.weight", "2": "lora.2.weight"}[index]
            out[base + f"attn.{branch}_lora.{target}"] = tensor.flatten() if index == "0" else tensor.t()
        else:
            head, _, tail = rest.partition(".")
            name = f"{proj[head]}.{tail}" if head in proj else rest
            out[base + "attn." + name] = tensor if _KEPT_3D.match(local) or tensor.dim() != 3 else tensor.flatten()
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(config: ModelConfig) -> dict:
    """fla's ``config.json`` for a model of ``config`` (``"model_type": "rwkv7"``). fla's group-norm epsilon is
    ``head_dim * norm_eps``: with ``norm_eps`` 1e-5 it is BlinkDL's 64e-5 exactly at head size 64, the size
    of every released RWKV-7."""
    return {"architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "attn_mode": "chunk",
            "hidden_size": config.n_embd, "num_hidden_layers": config.n_layer, "head_dim": config.head_size,
            "intermediate_size": config.dim_ffn, "hidden_ratio": config.dim_ffn / config.n_embd,
            "vocab_size": config.vocab_size, "value_dim": [config.dim_att] * config.n_layer,
            "decay_low_rank_dim": config.lora["decay"], "a_low_rank_dim": config.lora["iclr"],
            "v_low_rank_dim": config.lora["value"], "gate_low_rank_dim": config.lora["gate"],
            "hidden_act": "sqrelu", "norm_first": True, "norm_bias": True, "norm_eps": 1e-5,
            "tie_word_embeddings": False, "torch_dtype": "float32"}
