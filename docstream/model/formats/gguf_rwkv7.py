"""RWKV-7 as a GGUF file for llama.cpp (architecture ``rwkv7``), written with the ``gguf`` package.

The names, shapes and metadata are those of llama.cpp's ``convert_hf_to_gguf.py`` (``Rwkv7Model``). Shapes
below are in PyTorch order; GGUF records them reversed.

* ``token_embd``, ``token_embd_norm`` (layer 0's ``ln0``), ``output_norm`` (``ln_out``), ``output`` (``head``);
* per block ``blk.N.``:
  * ``attn_norm`` / ``attn_norm_2``: ``ln1`` / ``ln2``;
  * ``time_mix_lerp_fused``: the six token-shift mixes ``x_r, x_w, x_k, x_v, x_a, x_g`` stacked into
    ``[6, 1, 1, C]``;
  * ``time_mix_{w,a,v}0`` ``[C]``; ``time_mix_{w,a,v,g}1`` ``[rank, C]`` and ``...2`` ``[C, rank]``, which are
    BlinkDL's matrices transposed. Block 0's unused ``v0/v1/v2`` are copies of its ``a0/a1/a2``, as
    llama.cpp's converter writes them;
  * ``time_mix_k_k``, ``time_mix_k_a`` ``[C]``, ``time_mix_r_k`` ``[H * N]``;
  * ``time_mix_receptance/key/value/output``, ``time_mix_ln`` (``ln_x``);
  * ``channel_mix_lerp_k``, ``channel_mix_key``, ``channel_mix_value``.

Every tensor is written as float32, so the file holds exactly the checkpoint's values; llama.cpp's
``llama-quantize`` makes smaller files from it. The vocabulary is the World tokenizer's, as llama.cpp's
``rwkv`` tokenizer reads it. Id 0 is ``<s>``, each token's bytes are escaped as Python's ``repr`` writes
them, and ``[PADn]`` fills the rows past the vocabulary. The end-of-turn token is ``\\n\\n`` (261), and the
chat template is ``rwkv-world``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from docstream.model.config import ModelConfig

__all__ = ["ARCH", "gguf_tensors", "write_gguf"]

ARCH = "rwkv7"
#: the token-shift mixes in the order llama.cpp fuses them
LERP_ORDER = ("r", "w", "k", "v", "a", "g")
#: BlinkDL attention tensors -> llama.cpp names (the low-rank ones are handled apart)
_ATT = {"receptance.weight": "time_mix_receptance.weight", "key.weight": "time_mix_key.weight",
        "value.weight": "time_mix_value.weight", "output.weight": "time_mix_output.weight",
        "ln_x.weight": "time_mix_ln.weight", "ln_x.bias": "time_mix_ln.bias",
        "k_k": "time_mix_k_k.weight", "k_a": "time_mix_k_a.weight", "r_k": "time_mix_r_k.weight"}
_NORMS = {"ln0": "token_embd_norm", "ln1": "attn_norm", "ln2": "attn_norm_2"}
#: id of "\n\n" in the World vocabulary: llama.cpp's end-of-turn token for RWKV World chat
EOT_TOKEN = 261


def gguf_tensors(sd: dict[str, Tensor], config: ModelConfig) -> dict[str, np.ndarray]:
    """llama.cpp's tensors of a BlinkDL RWKV-7 state dict, as float32 numpy arrays in PyTorch order."""
    out: dict[str, Tensor] = {"token_embd.weight": sd["emb.weight"]}
    for layer in range(config.n_layer):
        p, blk = f"blocks.{layer}.", f"blk.{layer}."
        for blink, name in _NORMS.items():
            for kind in ("weight", "bias"):
                if p + f"{blink}.{kind}" in sd:
                    out[(blk if blink != "ln0" else "") + f"{name}.{kind}"] = sd[p + f"{blink}.{kind}"]
        out[blk + "time_mix_lerp_fused.weight"] = torch.stack([sd[p + f"att.x_{m}"] for m in LERP_ORDER])
        for branch in ("w", "a", "v", "g"):
            source = "a" if branch == "v" and layer == 0 else branch  # block 0: copies of a, never used
            if branch != "g":
                out[blk + f"time_mix_{branch}0.weight"] = sd[p + f"att.{source}0"]
            out[blk + f"time_mix_{branch}1.weight"] = sd[p + f"att.{source}1"].t()
            out[blk + f"time_mix_{branch}2.weight"] = sd[p + f"att.{source}2"].t()
        for blink, name in _ATT.items():
            out[blk + name] = sd[p + "att." + blink]
        out[blk + "channel_mix_lerp_k.weight"] = sd[p + "ffn.x_k"]
        out[blk + "channel_mix_key.weight"] = sd[p + "ffn.key.weight"]
        out[blk + "channel_mix_value.weight"] = sd[p + "ffn.value.weight"]
    out["output_norm.weight"], out["output_norm.bias"] = sd["ln_out.weight"], sd["ln_out.bias"]
    out["output.weight"] = sd["head.weight"]
    squeezed = {name: t if name.endswith("lerp_fused.weight") else t.squeeze() for name, t in out.items()}
    squeezed = {name: t.flatten() if "time_mix_r_k" in name else t for name, t in squeezed.items()}
    return {name: t.detach().float().contiguous().numpy() for name, t in squeezed.items()}


def world_vocab(id_to_bytes: dict[int, bytes], vocab_size: int) -> tuple[list[bytes], list[int]]:
    """llama.cpp's ``rwkv`` token list and types for the World vocabulary ``id_to_bytes`` (ids 1..n)."""
    import gguf

    ids = sorted(id_to_bytes)
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError("the World vocabulary's ids must run 1, 2, 3, ... without gaps for llama.cpp")
    if len(ids) + 1 > vocab_size:
        raise ValueError(f"the World vocabulary has {len(ids)} tokens but the model only {vocab_size} embeddings: "
                         f"it was trained with another tokenizer, and llama.cpp's rwkv7 reads only World-vocabulary "
                         f"models (pass --tokenizer if the model has a World vocabulary file of its own)")
    tokens = [b"<s>"] + [repr(id_to_bytes[i])[2:-1].encode("utf-8") for i in ids]
    types = [gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * len(ids)
    tokens += [f"[PAD{i}]".encode("utf-8") for i in range(len(tokens), vocab_size)]
    types += [gguf.TokenType.UNUSED] * (vocab_size - len(types))
    return tokens, [int(t) for t in types]


def write_gguf(path: Path, sd: dict[str, Tensor], config: ModelConfig, id_to_bytes: dict[int, bytes],
               name: str) -> None:
    """Write the GGUF file ``path`` (a temp path: the caller renames it into place)."""
    import gguf

    tensors = gguf_tensors(sd, config)
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_name(name)
    writer.add_context_length(1048576)  # RWKV is not context limited
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_layer_norm_eps(1e-5)
    writer.add_wkv_head_size(config.head_size)
    writer.add_decay_lora_rank(config.lora["decay"])
    writer.add_iclr_lora_rank(config.lora["iclr"])
    writer.add_value_residual_mix_lora_rank(config.lora["value"])
    writer.add_gate_lora_rank(config.lora["gate"])
    writer.add_feed_forward_length(config.dim_ffn)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_head_count(0)  # required by llama.cpp, unused by RWKV
    tokens, types = world_vocab(id_to_bytes, config.vocab_size)
    writer.add_tokenizer_model("rwkv")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_chat_template("rwkv-world")
    writer.add_eot_token_id(EOT_TOKEN)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
