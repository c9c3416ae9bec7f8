"""Initial weights of a new RWKV-7 model, the way BlinkDL's RWKV-LM starts RWKV-7 training from scratch.

Source: https://github.com/BlinkDL/RWKV-LM, ``RWKV-v7/train_temp/src/model.py`` (read at commit
524481d5099b38d9bc8ef1e89209161b86c8011b): the ``__init__`` of ``RWKV_Tmix_x070`` and
``RWKV_CMix_x070`` and ``RWKV.generate_init_weight``, which ``train.py`` always runs before training
from scratch (its output replaces some of the module ``__init__`` values, see below). With ``L`` layers,
layer ``l``, width ``C``, ``H`` heads of size ``N``, channel ``n`` in ``0..C-1``:

* layer ratios: ``r01 = l / (L - 1)`` (0 at the first layer, 1 at the last) and
  ``r10 = 1 - l / L`` (1 at the first layer, ``1/L`` at the last).
* token-shift mixes, with ``d[n] = n / C``: ``x_r = x_g = 1 - d ** (0.2 r10)``,
  ``x_k = x_v = 1 - d ** (0.7 r10)``, ``x_w = x_a = 1 - d ** (0.9 r10)``; the channel mix
  ``ffn.x_k = 1 - d ** (r10 ** 4)``. Deeper layers take less of the previous token.
* per-channel shapes: ``linear[n] = n / (C-1) - 0.5``; ``zigzag`` ramps -1..1 inside every head,
  ``z = ((n mod N) - (N-1)/2) / ((N-1)/2)``, ``zigzag = z |z|``.
* decay base ``w0 = -6 + 6 (n / (C-1)) ** (1 + r01 ** 0.3) + 0.5 + 2.5 zigzag`` (the decay is
  ``exp(-exp(-0.5) sigmoid(w0 + lora))``: slow and fast channels in every head).
* in-context learning rate base ``a0 = -0.19 + 0.3 zigzag + 0.4 linear``; value-residual gate
  base ``v0 = 0.73 - 0.4 linear``; ``k_k = 0.71 - 0.1 linear``; ``k_a = 1.02``; ``r_k = -0.04``.
* low-rank branches: the down projections ``w1, a1, v1, g1`` [C, D] are zero and the up projections
  ``w2, a2, v2, g2`` [D, C] orthogonal with gain ``0.1`` (times ``sqrt(D / C)`` when ``D > C``), so
  the decay, in-context learning rate and value-residual gate start at their bases ``w0, a0, v0``,
  the output gate ``sigmoid(x g1) g2`` at ``0.5`` times the column sums of ``g2``, and the zero
  factors still receive gradient through the nonzero ones.
* ``ln_x.weight = ((l + 1) / L) ** 0.7`` (group-norm output grows with depth), ``ln_x.bias = 0``.
* projections (``generate_init_weight``): ``att.receptance``, ``att.value`` and ``ffn.key`` orthogonal
  with gain 1, ``att.key`` orthogonal with gain 0.1, ``att.output`` and ``ffn.value`` zero, so every
  block starts as the identity on the residual stream.
* ``emb`` uniform in ``[-1e-4, 1e-4]``; ``head`` orthogonal with gain ``0.5 sqrt(V / C)`` when the
  vocabulary ``V > C``, else 0.5; layer norms ``ln0/ln1/ln2/ln_out`` weight 1, bias 0.

The module ``__init__`` of the reference also draws uniform values for the attention projections
(``receptance``/``value`` in ``±0.5/sqrt(C)``, ``key`` in ``±0.05/sqrt(C)``) and ``ffn.key``
(``±0.5/sqrt(C)``), but ``generate_init_weight`` overwrites every ``*.weight`` matrix that is not a norm,
so training starts from the orthogonal values above, which are the ones used here.

Differences from the reference, all forced by layout or edge cases, none in the formulas:

* docstream's layer 0 has no ``v0``/``v1``/``v2`` (layer 0 never uses the value residual); the
  reference creates and initialises them there without using them.
* low-rank widths are whatever the model was built with (``config.lora``: ``decay``, ``iclr``,
  ``value``, ``gate``; ``ModelConfig.new`` defaults to those of the released models); the reference
  derives them from ``C`` (``2.5 sqrt(C)``, ``1.7 sqrt(C)``, ``5 sqrt(C)`` rounded to 32). The init
  formulas do not depend on the width.
* ``r01`` is 0 for a one-layer model (the reference divides by ``L - 1``); ``head_size`` must be >= 2
  (the zigzag divides by ``N - 1``).
* random values are drawn in float32 on the CPU from one ``torch.Generator`` (emb, then per layer
  w2, a2, v2, g2, receptance, key, value, ffn.key, then head), then
  copied to the parameter's dtype and device: the same seed gives the same weights on any device.
  The deterministic formulas are evaluated in float64 and rounded once (the reference rounds some
  intermediate steps to float32; the results agree to float32 precision).

Parameter layouts match BlinkDL checkpoints (docstream names and stores them the same way): mixes and
bases are ``[1, 1, C]``, ``r_k`` is ``[H, N]``, the low-rank factors are plain ``[C, D]`` / ``[D, C]``
tensors used as ``x @ w1 @ w2``, and linear weights are ``[out, in]`` as in ``nn.Linear``, the layout
the reference's ``nn.init.orthogonal_`` calls see as well.
"""
from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import Tensor, nn

from docstream.model.v7 import RWKV7

__all__ = ["init_rwkv7_"]

M = TypeVar("M", bound=RWKV7)

#: low-rank up projections and the gain of their orthogonal init
_LORA_UP_GAIN = 0.1
#: mixes: token-shift exponent factor per coefficient (``x = 1 - (n/C) ** (factor * r10)``)
_MIX_EXPONENT = {"x_r": 0.2, "x_w": 0.9, "x_k": 0.7, "x_v": 0.7, "x_a": 0.9, "x_g": 0.2}
_EMB_BOUND = 1e-4
_HEAD_GAIN = 0.5
_ATT_KEY_GAIN = 0.1


class _Draw:
    """Random float32 CPU tensors from one generator."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def orthogonal(self, rows: int, cols: int, gain: float) -> Tensor:
        out = torch.empty(rows, cols, dtype=torch.float32)
        return nn.init.orthogonal_(out, gain=gain, generator=self.gen)

    def uniform(self, rows: int, cols: int, bound: float) -> Tensor:
        out = torch.empty(rows, cols, dtype=torch.float32)
        return nn.init.uniform_(out, -bound, bound, generator=self.gen)


def _lora_up(draw: _Draw, rank: int, c: int) -> Tensor:
    """[rank, C] up projection: orthogonal, gain 0.1 (times sqrt(rank/C) for a tall matrix)."""
    gain = math.sqrt(rank / c) if rank > c else 1.0
    return draw.orthogonal(rank, c, gain * _LORA_UP_GAIN)


def _channel_shapes(c: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """float64 [C] ``d = n/C``, ``ramp = n/(C-1)`` (0 to 1) and the per-head ``zigzag`` (-1 to 1)."""
    idx = torch.arange(c, dtype=torch.float64)
    half = (n - 1) / 2
    z = (idx % n - half) / half
    return idx / c, idx / (c - 1), z * z.abs()


def _time_mix(att: nn.Module, layer: int, n_layer: int, c: int, draw: _Draw) -> dict[str, Tensor]:
    n = att.head_size
    r01 = layer / (n_layer - 1) if n_layer > 1 else 0.0
    r10 = 1.0 - layer / n_layer
    d, ramp, zigzag = _channel_shapes(c, n)
    linear = ramp - 0.5
    www = -6.0 + 6.0 * ramp ** (1.0 + r01 ** 0.3)

    values: dict[str, Tensor] = {name: 1.0 - d ** (factor * r10) for name, factor in _MIX_EXPONENT.items()}
    values["w0"] = www + 0.5 + 2.5 * zigzag
    values["a0"] = -0.19 + 0.3 * zigzag + 0.4 * linear
    values["k_k"] = 0.71 - 0.1 * linear
    values["k_a"] = torch.full((c,), 1.02, dtype=torch.float64)
    if hasattr(att, "v0"):
        values["v0"] = 0.73 - 0.4 * linear
    values = {k: v.reshape(1, 1, c) for k, v in values.items()}
    values["r_k"] = torch.full((att.n_head, n), -0.04, dtype=torch.float64)

    # random tensors, drawn in the reference's module order: w2, a2, v2, g2, then the projections
    for lora in ("w", "a", "v", "g"):
        down = getattr(att, f"{lora}1", None)
        if down is None:  # v1/v2 in layer 0
            continue
        values[f"{lora}1"] = torch.zeros(down.shape)
        values[f"{lora}2"] = _lora_up(draw, down.shape[1], c)
    values["receptance.weight"] = draw.orthogonal(c, c, 1.0)
    values["key.weight"] = draw.orthogonal(c, c, _ATT_KEY_GAIN)
    values["value.weight"] = draw.orthogonal(c, c, 1.0)
    values["output.weight"] = torch.zeros(c, c)
    values["ln_x.weight"] = torch.full((c,), ((layer + 1) / n_layer) ** 0.7, dtype=torch.float64)
    values["ln_x.bias"] = torch.zeros(c)
    return values


def _channel_mix(ffn: nn.Module, layer: int, n_layer: int, c: int, draw: _Draw) -> dict[str, Tensor]:
    d = torch.arange(c, dtype=torch.float64) / c
    r10 = 1.0 - layer / n_layer
    f = ffn.key.weight.shape[0]
    return {"x_k": (1.0 - d ** (r10 ** 4)).reshape(1, 1, c),
            "key.weight": draw.orthogonal(f, c, 1.0),
            "value.weight": torch.zeros(c, f)}


def _layer_norm(c: int) -> dict[str, Tensor]:
    return {"weight": torch.ones(c), "bias": torch.zeros(c)}


def init_rwkv7_(model: M, *, seed: int = 0, generator: torch.Generator | None = None) -> M:
    """Set every parameter of an RWKV-7 ``model`` to RWKV-LM's from-scratch initial values, in place.

    The formulas are listed in this module's docstring. Random parts (orthogonal matrices, the
    embedding) come from ``generator`` (a CPU ``torch.Generator``) when given, else from a new one
    seeded with ``seed``: the same seed gives bitwise the same weights on any device and dtype
    choice of the model (values are drawn in float32 on the CPU and then cast). Runs under
    ``torch.no_grad`` and keeps each parameter's dtype, device and ``requires_grad``.
    Returns ``model``. Raises ``TypeError`` for a model that is not RWKV-7 and ``ValueError`` for a
    head size below 2 or a parameter left without a value (a layout this function does not know).
    """
    if not isinstance(model, RWKV7):
        raise TypeError(f"init_rwkv7_ initialises RWKV-7 models, got {type(model).__name__}")
    cfg = model.config
    if cfg.head_size < 2:
        raise ValueError(f"head_size must be at least 2 for the RWKV-7 init (got {cfg.head_size})")
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    elif generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    draw = _Draw(generator)
    c, n_layer, v = cfg.n_embd, cfg.n_layer, cfg.vocab_size

    values: dict[str, Tensor] = {"emb.weight": draw.uniform(v, c, _EMB_BOUND)}
    for layer, block in enumerate(model.blocks):
        prefix = f"blocks.{layer}."
        for ln in ("ln0", "ln1", "ln2"):
            if hasattr(block, ln):
                values.update({f"{prefix}{ln}.{k}": t for k, t in _layer_norm(c).items()})
        att = _time_mix(block.att, layer, n_layer, c, draw)
        values.update({f"{prefix}att.{k}": t for k, t in att.items()})
        ffn = _channel_mix(block.ffn, layer, n_layer, c, draw)
        values.update({f"{prefix}ffn.{k}": t for k, t in ffn.items()})
    values.update({f"ln_out.{k}": t for k, t in _layer_norm(c).items()})
    head_gain = _HEAD_GAIN * math.sqrt(v / c) if v > c else _HEAD_GAIN
    values["head.weight"] = draw.orthogonal(v, c, head_gain)

    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(values))
    unknown = sorted(set(values) - set(params))
    if missing or unknown:
        raise ValueError(f"RWKV-7 init does not match the model's parameters: no value for {missing}, "
                         f"no parameter for {unknown}")
    with torch.no_grad():
        for name, param in params.items():
            value = values[name]
            if value.shape != param.shape:
                raise ValueError(f"RWKV-7 init: {name} has shape {tuple(param.shape)}, "
                                 f"the init made {tuple(value.shape)}")
            param.copy_(value.to(torch.float32))
    return model
