"""RWKV-5.2 ("Eagle"): multi-head matrix-valued state with a learned per-channel decay."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from docstream.kernels import wkv6
from docstream.model.base import (HEAD_FP32_PARAMS, Linear, RWKVModel, common_shapes, group_norm_heads, mix_param,
                                  token_shift)
from docstream.model.config import ModelConfig
from docstream.model.v4 import ChannelMix4


class GatedHeadMix(nn.Module):
    """What RWKV-5.2 and RWKV-6 time mixes share: r/k/v/gate projections into heads, the WKV with
    per-channel decay, a per-head group norm, the SiLU gate and the output projection."""

    def __init__(self, n_embd: int, dim_att: int, head_size: int):
        super().__init__()
        self.n_head, self.head_size = dim_att // head_size, head_size
        self.time_faaaa = nn.Parameter(torch.empty(self.n_head, head_size))
        self.receptance = Linear(n_embd, dim_att)
        self.key = Linear(n_embd, dim_att)
        self.value = Linear(n_embd, dim_att)
        self.gate = Linear(n_embd, dim_att)
        self.output = Linear(dim_att, n_embd)
        self.ln_x = nn.GroupNorm(self.n_head, dim_att, eps=64e-5)

    def attend(self, rx: Tensor, kx: Tensor, vx: Tensor, gx: Tensor, w: Tensor, wkv: Tensor,
               backend: str, wkv_out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mixed inputs [B, T, C] and decay w [B, T, H, N] -> (output [B, T, C], new WKV state, written
        into ``wkv_out`` when given)."""
        heads = w.shape
        r = self.receptance(rx).float().view(heads)
        k = self.key(kx).float().view(heads)
        v = self.value(vx).float().view(heads)
        g = F.silu(self.gate(gx))
        y, wkv = wkv6(r, k, v, w, self.time_faaaa.float(), wkv, backend=backend, out=wkv_out)
        y = group_norm_heads(y, self.ln_x).to(rx.dtype)
        return self.output(y * g), wkv


class TimeMix5(GatedHeadMix):
    def __init__(self, n_embd: int, dim_att: int, head_size: int):
        super().__init__(n_embd, dim_att, head_size)
        self.time_mix_k, self.time_mix_v = mix_param(n_embd), mix_param(n_embd)
        self.time_mix_r, self.time_mix_g = mix_param(n_embd), mix_param(n_embd)
        self.time_decay = nn.Parameter(torch.empty(self.n_head, head_size))

    def forward(self, xx: Tensor, shift: Tensor, wkv: Tensor, v_first: Tensor | None,
                backend: str, wkv_out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        b, t, _ = xx.shape
        sx = token_shift(xx, shift)  # xx * m + sx * (1 - m) = lerp(sx, xx, m): m weighs the current token
        kx, vx, rx, gx = (torch.lerp(sx, xx, m) for m in
                          (self.time_mix_k, self.time_mix_v, self.time_mix_r, self.time_mix_g))
        w = torch.exp(-torch.exp(self.time_decay.float())).expand(b, t, self.n_head, self.head_size)
        out, wkv = self.attend(rx, kx, vx, gx, w, wkv, backend, wkv_out)
        return out, wkv, v_first


class RWKV5(RWKVModel):
    version = "5.2"
    fp32_params = HEAD_FP32_PARAMS

    @classmethod
    def config_from_state_dict(cls, sd: dict[str, Tensor]) -> ModelConfig:
        head_size = sd["blocks.0.att.time_decay"].shape[1]
        return ModelConfig(version="5.2", **common_shapes(sd), head_size=head_size)

    def make_att(self, layer_id: int) -> nn.Module:
        return TimeMix5(self.config.n_embd, self.config.dim_att, self.config.head_size)

    def make_ffn(self, layer_id: int) -> nn.Module:
        return ChannelMix4(self.config.n_embd, self.config.dim_ffn)
