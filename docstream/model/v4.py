"""RWKV-4 ("Pile" models): scalar-per-channel WKV with a running-maximum exponent."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from docstream.kernels import wkv4
from docstream.model.base import Linear, RWKVModel, common_shapes, mix_param, squared_relu, token_shift
from docstream.model.config import ModelConfig


class TimeMix4(nn.Module):
    def __init__(self, n_embd: int, dim_att: int):
        super().__init__()
        self.time_decay = nn.Parameter(torch.empty(dim_att))
        self.time_first = nn.Parameter(torch.empty(dim_att))
        self.time_mix_k, self.time_mix_v, self.time_mix_r = mix_param(n_embd), mix_param(n_embd), mix_param(n_embd)
        self.key = Linear(n_embd, dim_att)
        self.value = Linear(n_embd, dim_att)
        self.receptance = Linear(n_embd, dim_att)
        self.output = Linear(dim_att, n_embd)

    def forward(self, xx: Tensor, shift: Tensor, wkv: Tensor, v_first: Tensor | None,
                backend: str, wkv_out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        sx = token_shift(xx, shift)
        # RWKV-4/5 mix as xx * m + sx * (1 - m) = lerp(sx, xx, m): m weighs the current token (RWKV-6/7
        # store the other weight and lerp from xx towards sx), one pass instead of four
        kx, vx, rx = (torch.lerp(sx, xx, m) for m in (self.time_mix_k, self.time_mix_v, self.time_mix_r))
        r = torch.sigmoid(self.receptance(rx))
        k, v = self.key(kx).float(), self.value(vx).float()
        y, wkv = wkv4(-torch.exp(self.time_decay.float()), self.time_first.float(), k, v, wkv, backend=backend,
                      out=wkv_out)
        return self.output(r * y.to(xx.dtype)), wkv, v_first


class ChannelMix4(nn.Module):
    """The feed-forward of RWKV-4 and RWKV-5.2: squared-ReLU MLP gated by a receptance."""

    def __init__(self, n_embd: int, dim_ffn: int):
        super().__init__()
        self.time_mix_k, self.time_mix_r = mix_param(n_embd), mix_param(n_embd)
        self.key = Linear(n_embd, dim_ffn)
        self.receptance = Linear(n_embd, n_embd)
        self.value = Linear(dim_ffn, n_embd)

    def forward(self, xx: Tensor, shift: Tensor) -> Tensor:
        sx = token_shift(xx, shift)  # lerp(sx, xx, m): m weighs the current token, as in the attention
        kx, rx = torch.lerp(sx, xx, self.time_mix_k), torch.lerp(sx, xx, self.time_mix_r)
        return torch.sigmoid(self.receptance(rx)) * self.value(squared_relu(self.key(kx)))


class RWKV4(RWKVModel):
    version = "4"
    fp32_params = ("att.time_decay", "att.time_first")

    @classmethod
    def config_from_state_dict(cls, sd: dict[str, Tensor]) -> ModelConfig:
        return ModelConfig(version="4", **common_shapes(sd), head_size=0)

    def make_att(self, layer_id: int) -> nn.Module:
        return TimeMix4(self.config.n_embd, self.config.dim_att)

    def make_ffn(self, layer_id: int) -> nn.Module:
        return ChannelMix4(self.config.n_embd, self.config.dim_ffn)

    def initial_wkv(self, batch_size: int, device: torch.device) -> Tensor:
        wkv = super().initial_wkv(batch_size, device)
        wkv[:, :, 2] = -1e30  # the shared exponent starts at "minus infinity", finite so exp() stays defined
        return wkv

