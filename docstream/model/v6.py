"""RWKV-6 ("Finch"): data-dependent token shift and data-dependent per-token decay."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from docstream.model.base import (HEAD_FP32_PARAMS, Linear, RWKVModel, common_shapes, matmul, mix_param, squared_relu,
                                  token_shift)
from docstream.model.config import ModelConfig
from docstream.model.v5 import GatedHeadMix


class TimeMix6(GatedHeadMix):
    def __init__(self, n_embd: int, dim_att: int, head_size: int, d_mix: int, d_decay: int):
        super().__init__(n_embd, dim_att, head_size)
        self.time_maa_x, self.time_maa_w, self.time_maa_k = mix_param(n_embd), mix_param(n_embd), mix_param(n_embd)
        self.time_maa_v, self.time_maa_r, self.time_maa_g = mix_param(n_embd), mix_param(n_embd), mix_param(n_embd)
        self.time_maa_w1 = nn.Parameter(torch.empty(n_embd, 5 * d_mix))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, d_mix, n_embd))
        self.time_decay = nn.Parameter(torch.empty(1, 1, dim_att))
        self.time_decay_w1 = nn.Parameter(torch.empty(n_embd, d_decay))
        self.time_decay_w2 = nn.Parameter(torch.empty(d_decay, dim_att))

    def forward(self, xx: Tensor, shift: Tensor, wkv: Tensor, v_first: Tensor | None,
                backend: str, wkv_out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        b, t, c = xx.shape
        # xx + (sx - xx) * m = lerp(xx, sx, m): m weighs the previous token (RWKV-4/5 weigh the current one)
        sx = token_shift(xx, shift)
        lora = torch.tanh(matmul(torch.lerp(xx, sx, self.time_maa_x), self.time_maa_w1)).view(b, t, 5, -1)
        mw, mk, mv, mr, mg = (matmul(lora[:, :, f], self.time_maa_w2[f]) for f in range(5))
        wx = torch.lerp(xx, sx, self.time_maa_w + mw)
        kx = torch.lerp(xx, sx, self.time_maa_k + mk)
        vx = torch.lerp(xx, sx, self.time_maa_v + mv)
        rx = torch.lerp(xx, sx, self.time_maa_r + mr)
        gx = torch.lerp(xx, sx, self.time_maa_g + mg)
        w = self.time_decay.float() + matmul(torch.tanh(matmul(wx, self.time_decay_w1)), self.time_decay_w2).float()
        w = torch.exp(-torch.exp(w)).view(b, t, self.n_head, self.head_size)
        out, wkv = self.attend(rx, kx, vx, gx, w, wkv, backend, wkv_out)
        return out, wkv, v_first


class ChannelMix6(nn.Module):
    """RWKV-6 feed-forward: RWKV-4's with the ``maa`` form of the token-shift mix."""

    def __init__(self, n_embd: int, dim_ffn: int):
        super().__init__()
        self.time_maa_k, self.time_maa_r = mix_param(n_embd), mix_param(n_embd)
        self.key = Linear(n_embd, dim_ffn)
        self.receptance = Linear(n_embd, n_embd)
        self.value = Linear(dim_ffn, n_embd)

    def forward(self, xx: Tensor, shift: Tensor) -> Tensor:
        sx = token_shift(xx, shift)
        kx, rx = torch.lerp(xx, sx, self.time_maa_k), torch.lerp(xx, sx, self.time_maa_r)
        return torch.sigmoid(self.receptance(rx)) * self.value(squared_relu(self.key(kx)))


class RWKV6(RWKVModel):
    version = "6"
    fp32_params = HEAD_FP32_PARAMS

    @classmethod
    def config_from_state_dict(cls, sd: dict[str, Tensor]) -> ModelConfig:
        head_size = sd["blocks.0.att.time_faaaa"].shape[1]
        return ModelConfig(version="6", **common_shapes(sd), head_size=head_size,
                           lora={"mix": sd["blocks.0.att.time_maa_w2"].shape[1],
                                 "decay": sd["blocks.0.att.time_decay_w1"].shape[1]})

    def make_att(self, layer_id: int) -> nn.Module:
        c = self.config
        return TimeMix6(c.n_embd, c.dim_att, c.head_size, c.lora["mix"], c.lora["decay"])

    def make_ffn(self, layer_id: int) -> nn.Module:
        return ChannelMix6(self.config.n_embd, self.config.dim_ffn)
