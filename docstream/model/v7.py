"""RWKV-7 ("Goose"): the generalized delta rule with in-context learning rate and value residual."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from docstream.kernels import wkv7
from docstream.model.base import (Linear, RWKVModel, count_layers, group_norm_heads, matmul, mix_param,
                                  squared_relu, token_shift)
from docstream.model.config import ModelConfig

_DECAY_SCALE = 0.606531  # exp(-0.5): the decay is exp(-exp(-0.5) * sigmoid(.)), in (exp(-0.607), 1)


def _lora(n_in: int, rank: int, n_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    return nn.Parameter(torch.empty(n_in, rank)), nn.Parameter(torch.empty(rank, n_out))


class TimeMix7(nn.Module):
    def __init__(self, layer_id: int, n_embd: int, head_size: int, lora: dict[str, int]):
        super().__init__()
        c = n_embd
        self.layer_id = layer_id
        self.n_head, self.head_size = c // head_size, head_size
        self.x_r, self.x_w, self.x_k = mix_param(c), mix_param(c), mix_param(c)
        self.x_v, self.x_a, self.x_g = mix_param(c), mix_param(c), mix_param(c)
        self.w0 = mix_param(c)
        self.w1, self.w2 = _lora(c, lora["decay"], c)
        self.a0 = mix_param(c)
        self.a1, self.a2 = _lora(c, lora["iclr"], c)
        if layer_id > 0:  # the value residual mixes in the first layer's values
            self.v0 = mix_param(c)
            self.v1, self.v2 = _lora(c, lora["value"], c)
        self.g1, self.g2 = _lora(c, lora["gate"], c)
        self.k_k, self.k_a = mix_param(c), mix_param(c)
        self.r_k = nn.Parameter(torch.empty(self.n_head, head_size))
        self.receptance = Linear(c, c)
        self.key = Linear(c, c)
        self.value = Linear(c, c)
        self.output = Linear(c, c)
        self.ln_x = nn.GroupNorm(self.n_head, c, eps=64e-5)

    def forward(self, xx: Tensor, shift: Tensor, wkv: Tensor, v_first: Tensor | None,
                backend: str, wkv_out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        b, t, c = xx.shape
        heads = (b, t, self.n_head, self.head_size)
        sx = token_shift(xx, shift)  # xx + (sx - xx) * m = lerp(xx, sx, m), one pass instead of three
        xr, xw, xk, xv, xa, xg = (torch.lerp(xx, sx, m) for m in
                                  (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r = self.receptance(xr)
        w = matmul(torch.tanh(matmul(xw, self.w1)), self.w2)
        k = self.key(xk)
        v = self.value(xv)
        a = torch.sigmoid(self.a0 + matmul(matmul(xa, self.a1), self.a2))
        g = matmul(torch.sigmoid(matmul(xg, self.g1)), self.g2)
        kk = F.normalize((k * self.k_k).view(heads), dim=-1, p=2.0)
        k = k * torch.addcmul(1 - self.k_a, a, self.k_a)  # k * (1 + (a - 1) * k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, torch.sigmoid(self.v0 + matmul(matmul(xv, self.v1), self.v2)))
        w = torch.exp(-_DECAY_SCALE * torch.sigmoid((self.w0 + w).float()))
        y, wkv = wkv7(r.view(heads), w.view(heads), k.view(heads), v.view(heads), -kk,
                      kk * a.view(heads), wkv, backend=backend, out=wkv_out)
        y = group_norm_heads(y, self.ln_x).to(xx.dtype)
        bonus = (r * k * self.r_k.view(c)).view(heads).sum(dim=-1, keepdim=True) * v.view(heads)
        return self.output((y + bonus.view(b, t, c)) * g), wkv, v_first


class ChannelMix7(nn.Module):
    """RWKV-7 feed-forward: a squared-ReLU MLP on the token-shifted input, no receptance gate."""

    def __init__(self, n_embd: int, dim_ffn: int):
        super().__init__()
        self.x_k = mix_param(n_embd)
        self.key = Linear(n_embd, dim_ffn)
        self.value = Linear(dim_ffn, n_embd)

    def forward(self, xx: Tensor, shift: Tensor) -> Tensor:
        k = torch.lerp(xx, token_shift(xx, shift), self.x_k)
        return self.value(squared_relu(self.key(k)))


class RWKV7(RWKVModel):
    version = "7"
    fp32_params = ()

    @classmethod
    def config_from_state_dict(cls, sd: dict[str, Tensor]) -> ModelConfig:
        v, c = sd["emb.weight"].shape
        n_head, head_size = sd["blocks.0.att.r_k"].shape
        value_key = "blocks.1.att.v1" if "blocks.1.att.v1" in sd else "blocks.0.att.v1"
        lora = {"decay": sd["blocks.0.att.w1"].shape[1], "iclr": sd["blocks.0.att.a1"].shape[1],
                "gate": sd["blocks.0.att.g1"].shape[1],
                "value": sd[value_key].shape[1] if value_key in sd else 1}
        return ModelConfig(version="7", n_layer=count_layers(sd), n_embd=c, vocab_size=v, dim_att=c,
                           dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0], head_size=head_size, lora=lora)

    def make_att(self, layer_id: int) -> nn.Module:
        return TimeMix7(layer_id, self.config.n_embd, self.config.head_size, self.config.lora)

    def make_ffn(self, layer_id: int) -> nn.Module:
        return ChannelMix7(self.config.n_embd, self.config.dim_ffn)
