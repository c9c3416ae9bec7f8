"""Random RWKV checkpoints in BlinkDL's ``.pth`` state-dict layout.

The checkpoints produced here have exactly the parameter names and shapes
that BlinkDL's training code (RWKV-LM) saves for RWKV-4, RWKV-5.2 ("Eagle"),
RWKV-6 ("Finch") and RWKV-7 ("Goose"), in the same key order, so they can be
loaded by the official ``rwkv`` pip package as well as by docstream's own
loaders.  They are meant for tests: every parameter is random but *realistic*
(no zero-initialised matrices, decays in the ranges trained models have,
layer-norm weights around one, residual stream of order one), so that every
parameter influences the logits and fp32 comparisons are numerically tame.

Sizes are resolved by :meth:`docstream.model.config.ModelConfig.new`, so a checkpoint has the shape
a model built from the same arguments has; the low-rank widths (``lora``) use its keys.

Layout summary (C = n_embd, A = attention dim = C, H = C // head_size,
N = head_size, F = dim_ffn, V = vocab_size; matrices are ``[out, in]`` like
``nn.Linear.weight``):

* all versions: ``emb.weight [V,C]``, ``blocks.0.ln0.weight/bias [C]``, per
  layer ``blocks.{i}.ln1.*``, ``blocks.{i}.ln2.*`` ``[C]``, then
  ``ln_out.weight/bias [C]`` and ``head.weight [V,C]``.
* v4: ``att.time_decay [C]``, ``att.time_first [C]``,
  ``att.time_mix_k/v/r [1,1,C]``, ``att.key/value/receptance.weight [A,C]``,
  ``att.output.weight [C,A]``; ``ffn.time_mix_k/r [1,1,C]``,
  ``ffn.key.weight [F,C]``, ``ffn.receptance.weight [C,C]``,
  ``ffn.value.weight [C,F]``.
* v5.2: ``att.time_mix_k/v/r/g [1,1,C]``, ``att.time_decay [H,N]``,
  ``att.time_faaaa [H,N]``, ``att.receptance/key/value/gate.weight [A,C]``,
  ``att.output.weight [C,A]``, ``att.ln_x.weight/bias [A]``; ffn as v4.
* v6: ``att.time_maa_x/w/k/v/r/g [1,1,C]``, ``att.time_maa_w1 [C,5*Dmix]``,
  ``att.time_maa_w2 [5,Dmix,C]``, ``att.time_decay [1,1,A]``,
  ``att.time_decay_w1 [C,Ddecay]``, ``att.time_decay_w2 [Ddecay,A]``,
  ``att.time_faaaa [H,N]``, r/k/v/g/output as v5.2, ``att.ln_x.* [A]``;
  ``ffn.time_maa_k/r [1,1,C]``, ffn weights as v4.
* v7: ``att.x_r/x_w/x_k/x_v/x_a/x_g [1,1,C]``, ``att.w0 [1,1,C]``,
  ``att.w1 [C,Ddecay]``, ``att.w2 [Ddecay,C]``, ``att.a0/a1/a2`` (``Diclr``),
  ``att.v0/v1/v2`` (``Dvalue``; absent in layer 0, as in released checkpoints),
  ``att.g1 [C,Dgate]``, ``att.g2 [Dgate,C]``, ``att.k_k [1,1,C]``,
  ``att.k_a [1,1,C]``, ``att.r_k [H,N]``,
  ``att.receptance/key/value/output.weight [C,C]``, ``att.ln_x.* [C]``;
  ``ffn.x_k [1,1,C]``, ``ffn.key.weight [F,C]``, ``ffn.value.weight [C,F]``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping

import torch

from docstream.files import atomic_write
from docstream.model.config import VERSIONS, ModelConfig

__all__ = ["SUPPORTED_VERSIONS", "make_random_checkpoint", "save_random_checkpoint"]

SUPPORTED_VERSIONS: tuple[str, ...] = VERSIONS

# E[tanh(z)^2] and E[sigmoid(z)^2] for z ~ N(0, 1); used to give the
# low-rank branches a predictable output scale.
_E_TANH2 = 0.3943
_E_SIGMOID2 = 0.2933
# E[relu(z)^4] for z ~ N(0, 1): variance factor of the squared-ReLU FFN.
_E_RELU4 = 1.5

# Output-projection gain multipliers compensating the typical std of each
# branch's pre-projection activations, so that every residual branch adds a
# comparable share: measured over 2..24 branches the residual stream's rms
# grows from 1.0 (after ln0) to ~1.25-1.35, whatever the depth.
_GAIN_ATT_V4 = 3.0  # sigmoid(r) * wkv (wkv = weighted average of values)
_GAIN_ATT_V5 = 1.7  # group_norm(...) * silu(gate)
_GAIN_ATT_V7 = 1.0  # (group_norm(...) + bonus) * g
_GAIN_FFN_V4 = 1.85  # sigmoid(r) * relu(k)^2 @ V (v4, v5.2, v6)

_MIN_DIM = 2  # the official loader squeezes size-1 dims, so keep every dim >= 2


# --------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------


def _normalize_version(version: object) -> str:
    if isinstance(version, bool):
        raise ValueError(f"unknown RWKV version {version!r}; expected one of {SUPPORTED_VERSIONS}")
    if isinstance(version, (int, float)):
        text = f"{float(version):g}"
    elif isinstance(version, str):
        text = version.strip().lower().lstrip("v")
        try:
            text = f"{float(text):g}"
        except ValueError:
            pass
    else:
        raise ValueError(
            f"unknown RWKV version {version!r} (type {type(version).__name__}); "
            f"expected one of {SUPPORTED_VERSIONS}"
        )
    if text not in SUPPORTED_VERSIONS:
        raise ValueError(f"unknown RWKV version {version!r}; expected one of {SUPPORTED_VERSIONS}")
    return text


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_lora(lora: Mapping[str, int] | None) -> Mapping[str, int] | None:
    if lora is None:
        return None
    if not isinstance(lora, Mapping):
        raise ValueError(f"lora must be a dict of low-rank widths, got {type(lora).__name__}")
    for key, value in lora.items():
        _check_int(f"lora[{key!r}]", value, _MIN_DIM)
    return lora


# --------------------------------------------------------------------------
# random value helpers
# --------------------------------------------------------------------------


class _Rand:
    """Thin wrapper over a seeded CPU ``torch.Generator`` (values in float32)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(seed)

    def normal(self, *shape: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, dtype=torch.float32) * std + mean

    def uniform(self, *shape: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, dtype=torch.float32) * (high - low) + low

    def matrix(self, out_dim: int, in_dim: int, gain: float = 1.0) -> torch.Tensor:
        """``[out, in]`` matrix ~ N(0, gain^2 / in_dim): unit-variance inputs give outputs of std ``gain``."""
        return self.normal(out_dim, in_dim, std=gain / math.sqrt(in_dim))

    def mix(self, n: int) -> torch.Tensor:
        """Token-shift mixing coefficients ``[1,1,n]`` in (0.05, 0.95)."""
        return self.uniform(1, 1, n, low=0.05, high=0.95)

    def ramp(self, n: int, low: float, high: float, noise: float) -> torch.Tensor:
        """Channel ramp from ``low`` to ``high`` plus noise, clamped to the range."""
        base = torch.linspace(low, high, n, dtype=torch.float32)
        return (base + self.normal(n, std=noise)).clamp(min(low, high), max(low, high))

    def ln(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """LayerNorm / GroupNorm affine params: weight ~ 1 + noise, bias small noise."""
        return self.normal(n, mean=1.0, std=0.1), self.normal(n, std=0.05)


# --------------------------------------------------------------------------
# per-version layer builders (insertion order == RWKV-LM module order)
# --------------------------------------------------------------------------

_Put = Callable[[str, torch.Tensor], None]


def _att_v4(put: _Put, r: _Rand, C: int, out_gain: float) -> None:
    # -exp(time_decay) spans ~[-5, -0.01]  <=>  time_decay in [ln 0.01, ln 5]
    put("time_decay", r.ramp(C, math.log(0.01), math.log(5.0), noise=0.1))
    put("time_first", r.uniform(C, low=-1.0, high=1.0))
    put("time_mix_k", r.mix(C))
    put("time_mix_v", r.mix(C))
    put("time_mix_r", r.mix(C))
    put("key.weight", r.matrix(C, C))
    put("value.weight", r.matrix(C, C))
    put("receptance.weight", r.matrix(C, C))
    # r * wkv has std ~1/3 (sigmoid gate times an average of values)
    put("output.weight", r.matrix(C, C, out_gain * _GAIN_ATT_V4))


def _ffn_v4(put: _Put, r: _Rand, C: int, F: int, out_gain: float, maa: bool) -> None:
    prefix = "time_maa" if maa else "time_mix"
    put(f"{prefix}_k", r.mix(C))
    put(f"{prefix}_r", r.mix(C))
    put("key.weight", r.matrix(F, C))
    put("receptance.weight", r.matrix(C, C))
    # sigmoid(r) * relu(k)^2: compensate the squared-ReLU and gate scales
    put("value.weight", r.matrix(C, F, out_gain * _GAIN_FFN_V4 / math.sqrt(_E_RELU4)))


def _decay_v5(r: _Rand, n: int, slowest: float = 0.999, fastest: float = 0.3) -> torch.Tensor:
    # exp(-exp(time_decay)) spans ~(fastest, slowest)
    return r.ramp(n, math.log(-math.log(slowest)), math.log(-math.log(fastest)), noise=0.1)


def _gated_heads(put: _Put, r: _Rand, C: int, H: int, N: int, out_gain: float) -> None:
    """What RWKV-5.2 and RWKV-6 attention share, in checkpoint key order: bonus, projections, ln_x."""
    put("time_faaaa", r.uniform(H, N, low=-0.2, high=1.0))
    put("receptance.weight", r.matrix(C, C))
    put("key.weight", r.matrix(C, C))
    put("value.weight", r.matrix(C, C))
    put("output.weight", r.matrix(C, C, out_gain * _GAIN_ATT_V5))
    put("gate.weight", r.matrix(C, C))
    w, b = r.ln(C)
    put("ln_x.weight", w)
    put("ln_x.bias", b)


def _att_v5_2(put: _Put, r: _Rand, C: int, H: int, N: int, out_gain: float) -> None:
    put("time_mix_k", r.mix(C))
    put("time_mix_v", r.mix(C))
    put("time_mix_r", r.mix(C))
    put("time_mix_g", r.mix(C))
    put("time_decay", _decay_v5(r, C).reshape(H, N))
    _gated_heads(put, r, C, H, N, out_gain)


def _att_v6(put: _Put, r: _Rand, C: int, H: int, N: int, dims: dict[str, int], out_gain: float) -> None:
    d_mix, d_decay = dims["mix"], dims["decay"]
    for name in ("x", "w", "k", "v", "r", "g"):
        put(f"time_maa_{name}", r.mix(C))
    # data-dependent mix offsets: std ~0.15 around the static coefficients
    put("time_maa_w1", r.normal(C, 5 * d_mix, std=1.0 / math.sqrt(C)))
    put("time_maa_w2", r.normal(5, d_mix, C, std=0.15 / math.sqrt(d_mix * _E_TANH2)))
    # static part spans (0.4, 0.999); with the data-dependent offset (std
    # ~0.25 in log-log space) effective decays cover roughly (0.3, 0.999)
    put("time_decay", _decay_v5(r, C, fastest=0.4).reshape(1, 1, C))
    put("time_decay_w1", r.normal(C, d_decay, std=1.0 / math.sqrt(C)))
    put("time_decay_w2", r.normal(d_decay, C, std=0.25 / math.sqrt(d_decay * _E_TANH2)))
    _gated_heads(put, r, C, H, N, out_gain)


def _att_v7(put: _Put, r: _Rand, layer: int, C: int, H: int, N: int, dims: dict[str, int], out_gain: float) -> None:
    for name in ("r", "w", "k", "v", "a", "g"):
        put(f"x_{name}", r.mix(C))
    dw, da, dv, dg = dims["decay"], dims["iclr"], dims["value"], dims["gate"]
    # decay = exp(-exp(-0.5) * sigmoid(w0 + tanh(xw @ w1) @ w2)); w0 ramps
    # over [-2, 1] (+noise), the low-rank term adds std ~0.5
    put("w0", r.ramp(C, -2.0, 1.0, noise=0.25).reshape(1, 1, C))
    put("w1", r.normal(C, dw, std=1.0 / math.sqrt(C)))
    put("w2", r.normal(dw, C, std=0.5 / math.sqrt(dw * _E_TANH2)))
    # in-context learning rate a = sigmoid(a0 + (xa @ a1) @ a2)
    put("a0", r.normal(1, 1, C, mean=-0.2, std=0.4))
    put("a1", r.normal(C, da, std=1.0 / math.sqrt(C)))
    put("a2", r.normal(da, C, std=0.5 / math.sqrt(da)))
    if layer > 0:  # value-residual gate; unused (and absent) in layer 0
        put("v0", r.normal(1, 1, C, mean=0.5, std=0.4))
        put("v1", r.normal(C, dv, std=1.0 / math.sqrt(C)))
        put("v2", r.normal(dv, C, std=0.5 / math.sqrt(dv)))
    # output gate g = sigmoid(xg @ g1) @ g2, std ~1
    put("g1", r.normal(C, dg, std=1.0 / math.sqrt(C)))
    put("g2", r.normal(dg, C, std=1.0 / math.sqrt(dg * _E_SIGMOID2)))
    put("k_k", r.uniform(1, 1, C, low=0.5, high=1.1))
    put("k_a", r.uniform(1, 1, C, low=0.7, high=1.3))
    put("r_k", r.normal(H, N, std=0.5 / math.sqrt(N)))
    put("receptance.weight", r.matrix(C, C))
    put("key.weight", r.matrix(C, C))
    put("value.weight", r.matrix(C, C))
    put("output.weight", r.matrix(C, C, out_gain * _GAIN_ATT_V7))
    w, b = r.ln(C)
    put("ln_x.weight", w)
    put("ln_x.bias", b)


def _ffn_v7(put: _Put, r: _Rand, C: int, F: int, out_gain: float) -> None:
    put("x_k", r.mix(C))
    put("key.weight", r.matrix(F, C))
    put("value.weight", r.matrix(C, F, out_gain / math.sqrt(_E_RELU4)))


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def make_random_checkpoint(
    version: str,
    *,
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    head_size: int = 64,
    dim_ffn: int | None = None,
    lora: Mapping[str, int] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Build a random RWKV state dict exactly as BlinkDL's training code saves it.

    Args:
        version: ``"4"``, ``"5.2"``, ``"6"`` or ``"7"``.
        n_layer, n_embd, vocab_size: model size (``n_embd`` = C = attention dim).
        head_size: head size N (ignored for v4); ``n_embd`` must be divisible by it.
        dim_ffn: FFN width F; default :func:`docstream.model.config.default_dim_ffn`.
        lora: overrides for the low-rank widths (v6: ``mix``, ``decay``; v7: ``decay``,
            ``iclr``, ``value``, ``gate``); defaults :func:`docstream.model.config.default_lora`.
        seed: seed of the ``torch.Generator`` -- same arguments, same tensors.
        dtype: floating dtype of every tensor (values are drawn in float32).

    Returns:
        ``dict[name -> tensor]`` in RWKV-LM's parameter order.

    Raises:
        ValueError: on an unknown version or inconsistent / out-of-range sizes.
    """
    version = _normalize_version(version)
    n_layer = _check_int("n_layer", n_layer, 1)
    C = _check_int("n_embd", n_embd, _MIN_DIM)
    V = _check_int("vocab_size", vocab_size, _MIN_DIM)
    seed = _check_int("seed", seed, 0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if version == "4":
        H = N = 0  # unused
    else:
        N = _check_int("head_size", head_size, _MIN_DIM)
        if C % N != 0:
            raise ValueError(f"n_embd ({C}) must be divisible by head_size ({N}) for RWKV-{version}")
        H = C // N
    if dim_ffn is not None:
        _check_int("dim_ffn", dim_ffn, _MIN_DIM)
    shape = ModelConfig.new(version, n_layer=n_layer, n_embd=C, vocab_size=V, head_size=N, dim_ffn=dim_ffn,
                            lora=_check_lora(lora))
    F, dims = shape.dim_ffn, shape.lora

    r = _Rand(seed)
    # each block adds two residual branches; scale their output projections by
    # 1/sqrt(2*n_layer) so the residual stream stays O(1) at any depth
    out_gain = 1.0 / math.sqrt(2 * n_layer)
    sd: dict[str, torch.Tensor] = {}

    def putter(prefix: str) -> _Put:
        def put(name: str, tensor: torch.Tensor) -> None:
            key = prefix + name
            assert key not in sd, key
            sd[key] = tensor

        return put

    sd["emb.weight"] = r.normal(V, C)
    for i in range(n_layer):
        blk = putter(f"blocks.{i}.")
        for ln in ("ln1", "ln2") + (("ln0",) if i == 0 else ()):
            w, b = r.ln(C)
            blk(f"{ln}.weight", w)
            blk(f"{ln}.bias", b)
        att, ffn = putter(f"blocks.{i}.att."), putter(f"blocks.{i}.ffn.")
        if version == "4":
            _att_v4(att, r, C, out_gain)
            _ffn_v4(ffn, r, C, F, out_gain, maa=False)
        elif version == "5.2":
            _att_v5_2(att, r, C, H, N, out_gain)
            _ffn_v4(ffn, r, C, F, out_gain, maa=False)
        elif version == "6":
            _att_v6(att, r, C, H, N, dims, out_gain)
            _ffn_v4(ffn, r, C, F, out_gain, maa=True)
        else:
            _att_v7(att, r, i, C, H, N, dims, out_gain)
            _ffn_v7(ffn, r, C, F, out_gain)
    w, b = r.ln(C)
    sd["ln_out.weight"] = w
    sd["ln_out.bias"] = b
    sd["head.weight"] = r.matrix(V, C, gain=2.0)
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def save_random_checkpoint(path: str | os.PathLike[str], version: str, **kw) -> Path:
    """``torch.save`` a :func:`make_random_checkpoint` state dict to ``path`` atomically.

    The file is written to a temporary file in the same directory and then
    renamed over ``path``, so readers never see a partial checkpoint.  Parent
    directories are created.  Note the official ``rwkv`` package only loads
    files whose name ends in ``.pth``.  Returns ``Path(path)``.
    """
    sd = make_random_checkpoint(version, **kw)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda tmp: torch.save(sd, tmp))
    return dest
