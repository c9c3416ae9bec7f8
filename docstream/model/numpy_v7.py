"""RWKV-7 hidden states in numpy, for embedding short texts without torch (fast CLI queries).

A second implementation of :mod:`docstream.model.v7` (the reference; each step below quotes its
maths), float32 throughout, from the zero state, with no head: :meth:`NumpyRWKV7.hidden` returns the
final hidden states after ``ln_out``, what an embedder pools. Layer by layer, the linear maps run as
one matrix product over all positions (the token shift needs only the layer's own normalized input,
one position back), and the WKV recurrence, the only sequential part, runs token by token.

:meth:`NumpyRWKV7.hidden_batch` runs many texts at once: their positions are concatenated, so each
linear map is still one product, and the recurrence steps all texts together (one state per text).
One short text's cost is mostly numpy's per-call overhead, which a batch shares: 1000 queries of ~20
tokens ran 2-2.5x faster in batches of 64 than one at a time (measured on a busy 2-core machine).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

_DECAY_SCALE = np.float32(0.606531)  # exp(-0.5), as in v7.py
_LN_EPS = np.float32(1e-5)  # nn.LayerNorm's default
_GN_EPS = np.float32(64e-5)  # v7.py's ln_x (GroupNorm) eps
_F32 = np.float32


def rwkv_version(weights: Mapping[str, np.ndarray]) -> str:
    """The RWKV version of a BlinkDL state dict, by the same tensors as ``loader.detect_version``
    ("7", "6", "5", "4"), or ``ValueError`` for a dict that is not an RWKV checkpoint."""
    if "emb.weight" not in weights or "blocks.0.ln1.weight" not in weights:
        raise ValueError(f"not an RWKV checkpoint: no 'emb.weight' / 'blocks.0.ln1.weight' "
                         f"(found keys such as {sorted(weights)[:5]})")
    for key, version in (("r_k", "7"), ("time_maa_x", "6"), ("ln_x.weight", "5"), ("time_mix_k", "4")):
        if f"blocks.0.att.{key}" in weights:
            return version
    raise ValueError("unknown RWKV layout (none of the tensors of RWKV-4, 5, 6 or 7)")


@functools.cache
def _openblas() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) of the number of threads of the OpenBLAS numpy computes with, where one is loaded
    (Linux wheels), else None (Accelerate, MKL: left alone). Found as threadpoolctl finds it: a loaded
    library named *openblas*, whose functions may carry the prefix ``scipy_`` and suffix ``64_``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run numpy's matrix products on one OpenBLAS thread, then restore the previous count.

    The products here are small ([T, 256] by [256, 1024] for a query); OpenBLAS splits them over all
    cores anyway, and its threads spin waiting for each other: on a 2-core machine shared with other
    work, a 23-token query took 0.1-1.9 s that way against 30-40 ms on one thread (measured).
    """
    blas = _openblas()
    if blas is None:
        yield
        return
    get, put = blas
    before = get()
    put(1)
    try:
        yield
    finally:
        put(before)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: np.float32 = _LN_EPS) -> np.ndarray:
    """nn.LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias (biased variance)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return _F32(1) / (_F32(1) + np.exp(-x))


def _shift(xx: np.ndarray, first: np.ndarray) -> np.ndarray:
    """token_shift from the zero state, for texts concatenated along axis 0: the previous position's
    value, zeros at each text's first position (``first``: their indices)."""
    sx = np.empty_like(xx)
    sx[1:] = xx[:-1]
    sx[first] = 0
    return sx


class _Layout(NamedTuple):
    """Where the texts of a batch lie in the concatenated positions, and the order the recurrence reads them."""

    first: np.ndarray  # index of each text's first position (the token shift puts zeros there)
    order: np.ndarray  # position indices step by step: position t of every text longer than t, longest text first
    active: list[int]  # at each step, how many texts are that long: a prefix of the texts, longest first

    @classmethod
    def of(cls, lengths: Sequence[int]) -> _Layout:
        lengths = np.asarray(lengths, dtype=np.int64)
        first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        by_length = np.argsort(-lengths, kind="stable")
        steps = np.arange(int(lengths.max()))[:, None]
        running = lengths[by_length][None, :] > steps  # [step, text]: does the text have this position
        order = (first[by_length][None, :] + steps)[running]  # row-major: step by step, texts longest first
        return cls(first, order, running.sum(axis=1).tolist())


class NumpyRWKV7:
    """An RWKV-7 model's trunk (embedding, blocks, ``ln_out``) in numpy float32.

    ``weights``: a BlinkDL state dict of numpy arrays (:func:`docstream.model.pth_numpy.load_pth`).
    The config is read off the tensors as ``RWKV7.config_from_state_dict`` does; ``blocks.0.att.v0/v1/v2``
    (unused by layer 0, stored by some releases) and ``head.weight`` are ignored.
    """

    def __init__(self, weights: Mapping[str, np.ndarray]):
        version = rwkv_version(weights)
        if version != "7":
            raise ValueError(f"NumpyRWKV7 reads RWKV-7 checkpoints; this one is RWKV-{version}: "
                             f"use the torch model (docstream.model.load_model)")
        w = {k: np.asarray(v, dtype=_F32) for k, v in weights.items() if k != "head.weight"}
        for name, t in w.items():  # as loader.check_finite: NaN weights would give NaN vectors silently
            if not np.isfinite(t).all():
                raise ValueError(f"tensor {name!r} holds NaN or inf values: the checkpoint is damaged or comes "
                                 f"from a diverged training run")
        try:
            self.vocab_size, self.n_embd = w["emb.weight"].shape
            self.n_head, self.head_size = w["blocks.0.att.r_k"].shape
            self.n_layer = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
            self.emb = w["emb.weight"]
            self.ln0 = (w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"])
            self.ln_out = (w["ln_out.weight"], w["ln_out.bias"])
            self.layers = [self._layer(w, i) for i in range(self.n_layer)]
        except KeyError as err:
            raise ValueError(f"RWKV-7 checkpoint lacks tensor {err}") from None

    def _layer(self, w: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Layer ``i``'s parameters, flattened and with every matrix stored [in, out] (``x @ W``):
        nn.Linear weights are [out, in] (v7.py computes ``x @ W.T``); the LoRA matrices already are [in, out]."""
        att, ffn, C = f"blocks.{i}.att.", f"blocks.{i}.ffn.", self.n_embd
        p = {name: w[att + name].reshape(C) for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0",
                                                         "k_k", "k_a")}
        p.update({name: w[att + name] for name in ("w1", "w2", "a1", "a2", "g1", "g2")})
        if i > 0:  # layer 0 has no value residual
            p.update(v0=w[att + "v0"].reshape(C), v1=w[att + "v1"], v2=w[att + "v2"])
        p["r_k"] = w[att + "r_k"].reshape(C)
        for name in ("receptance", "key", "value", "output"):
            p[name] = np.ascontiguousarray(w[att + name + ".weight"].T)
        p["ln_x"] = (w[att + "ln_x.weight"], w[att + "ln_x.bias"])
        p["ln1"] = (w[f"blocks.{i}.ln1.weight"], w[f"blocks.{i}.ln1.bias"])
        p["ln2"] = (w[f"blocks.{i}.ln2.weight"], w[f"blocks.{i}.ln2.bias"])
        p["ffn_x_k"] = w[ffn + "x_k"].reshape(C)
        p["ffn_key"] = np.ascontiguousarray(w[ffn + "key.weight"].T)
        p["ffn_value"] = np.ascontiguousarray(w[ffn + "value.weight"].T)
        return p

    def hidden(self, tokens: Sequence[int]) -> np.ndarray:
        """Final hidden states [T, C] float32 (after ``ln_out``, before the head) of ``tokens``, from the
        zero state. ``ValueError`` for an empty sequence or an id outside the vocabulary."""
        return self.hidden_batch([tokens])[0]

    def hidden_batch(self, token_lists: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """:meth:`hidden` of each token list, computed together: ``[T_i, C]`` float32 per list, each from
        the zero state (the texts do not see each other). ``ValueError`` naming the list for an empty
        one or an id outside the vocabulary. Lists of similar lengths batch best: the recurrence runs
        as many steps as the longest list has tokens."""
        if isinstance(token_lists, np.ndarray) and token_lists.ndim < 2:
            raise ValueError("hidden_batch takes a list of token lists; use hidden() for one text")
        arrays = []
        for i, tokens in enumerate(token_lists):
            ids = np.asarray(tokens)
            if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"tokens must be a non-empty list of ints, got {str(tokens)[:60]} (text {i})")
            if ids.min() < 0 or ids.max() >= self.vocab_size:
                bad = ids.min() if ids.min() < 0 else ids.max()
                raise ValueError(f"token id {bad} of text {i} is outside the model's vocabulary "
                                 f"[0, {self.vocab_size})")
            arrays.append(ids)
        if not arrays:
            return []
        lengths = [len(ids) for ids in arrays]
        layout = _Layout.of(lengths)
        with one_blas_thread():
            hidden = self._trunk(np.concatenate(arrays), layout)
        return np.split(hidden, np.cumsum(lengths)[:-1])

    def _trunk(self, ids: np.ndarray, layout: _Layout) -> np.ndarray:
        x = _layer_norm(self.emb[ids], *self.ln0)  # x = ln0(emb(tokens))
        v_first = None
        for i, p in enumerate(self.layers):
            xx = _layer_norm(x, *p["ln1"])  # Block: xx = ln1(x)
            att, v_first = self._time_mix(p, xx, v_first, layout, first=i == 0)
            x = x + att  # x = x + att(ln1(x))
            xx2 = _layer_norm(x, *p["ln2"])
            # ChannelMix7: k = lerp(xx, shift(xx), x_k)
            k = xx2 + (_shift(xx2, layout.first) - xx2) * p["ffn_x_k"]
            r = np.maximum(k @ p["ffn_key"], 0)
            x = x + (r * r) @ p["ffn_value"]  # x = x + value(relu(key(k))^2)
        return _layer_norm(x, *self.ln_out)

    def _time_mix(self, p: dict[str, np.ndarray], xx: np.ndarray, v_first: np.ndarray | None, layout: _Layout,
                  first: bool) -> tuple[np.ndarray, np.ndarray]:
        """TimeMix7.forward for all positions of one layer (T: all texts' positions): (output [T, C], v_first)."""
        T, H, N = xx.shape[0], self.n_head, self.head_size
        dx = _shift(xx, layout.first) - xx
        # xr, xw, xk, xv, xa, xg = lerp(xx, sx, x_*)
        xr, xw, xk, xv, xa, xg = (xx + dx * p[m] for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r = xr @ p["receptance"]  # r = receptance(xr)
        w = np.tanh(xw @ p["w1"]) @ p["w2"]  # w = tanh(xw @ w1) @ w2
        k = xk @ p["key"]  # k = key(xk)
        v = xv @ p["value"]  # v = value(xv)
        a = _sigmoid(p["a0"] + (xa @ p["a1"]) @ p["a2"])  # a = sigmoid(a0 + (xa @ a1) @ a2)
        g = _sigmoid(xg @ p["g1"]) @ p["g2"]  # g = sigmoid(xg @ g1) @ g2
        kk = (k * p["k_k"]).reshape(T, H, N)  # kk = normalize(k * k_k per head), F.normalize's eps 1e-12
        kk = kk / np.maximum(np.sqrt((kk * kk).sum(axis=-1, keepdims=True)), _F32(1e-12))
        k = k * (_F32(1) + (a - _F32(1)) * p["k_a"])  # k = k * (1 + (a - 1) * k_a)
        if first:
            v_first = v  # layer 0: v_first = v
        else:  # v = lerp(v, v_first, sigmoid(v0 + (xv @ v1) @ v2))
            v = v + (v_first - v) * _sigmoid(p["v0"] + (xv @ p["v1"]) @ p["v2"])
        decay = np.exp(-_DECAY_SCALE * _sigmoid(p["w0"] + w))  # w = exp(-e^-0.5 * sigmoid(w0 + w))
        y = _wkv(r.reshape(T, H, N), decay.reshape(T, H, N), k.reshape(T, H, N), v.reshape(T, H, N),
                 -kk, kk * a.reshape(T, H, N), layout)
        # y = group_norm(y) per head (eps 64e-5), then the bonus (r * k * r_k summed per head) * v
        y = _layer_norm(y, _F32(1), _F32(0), _GN_EPS).reshape(T, H * N) * p["ln_x"][0] + p["ln_x"][1]
        bonus = (r * k * p["r_k"]).reshape(T, H, N).sum(axis=-1, keepdims=True) * v.reshape(T, H, N)
        return ((y + bonus.reshape(T, H * N)) * g) @ p["output"], v_first  # output((y + bonus) * g)


def _wkv(r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray,
         layout: _Layout) -> np.ndarray:
    """The generalized delta rule (kernels.reference.wkv7_ref) from S = 0, one state per text; inputs
    [T, H, N] (all texts' positions, as ``layout`` says), S [H, N(value), N(key)]:

        S <- S diag(w_t) + (S a_t) b_t^T + v_t k_t^T,   y_t = S r_t

    Step t updates the states of the texts longer than t together: with the texts longest first these
    are the first ``layout.active[t]`` states, and the others (ended texts) are left alone. The inputs
    are put in step order once, so a step reads contiguous rows. The two rank-1 terms are one product
    [S a_t, v_t] @ [b_t; k_t], and every step writes into preallocated arrays: the loop's cost is
    numpy's per-call overhead, so it makes as few calls as it can.
    """
    T, H, N = r.shape
    order = layout.order
    s = np.zeros((layout.active[0], H * N, N), dtype=_F32)  # per text: rows (head, value), columns key
    heads = s.reshape(-1, H, N, N)  # the same memory, per head
    update = np.empty_like(heads)
    left = np.empty((T, H, N, 2), dtype=_F32)  # [S a_t, v_t]: column 0 is filled in the loop
    left[..., 1] = v[order]
    right = np.stack((b[order], k[order]), axis=2)  # [T, H, 2, N]: [b_t; k_t]
    # row (h, i) of S decays by head h's w_t: repeated per row, step by step, since a plain elementwise
    # product with that (in cache) is faster than one broadcasting [H, 1, N] over [H, N, N] (measured:
    # 290 against 360 us for 64 texts), and repeating all steps at once would take T * H*N*N floats
    w = w[order]
    a_col, r_col = a[order][..., None], r[order][..., None]
    y = np.empty((T, H, N, 1), dtype=_F32)
    start = 0
    for n in layout.active:
        t = slice(start, start + n)  # this step's rows: one per running text
        np.matmul(heads[:n], a_col[t], out=left[t, :, :, :1])  # S a_t
        np.multiply(s[:n], np.repeat(w[t], N, axis=1), out=s[:n])  # S diag(w_t)
        np.matmul(left[t], right[t], out=update[:n])  # (S a_t) b_t^T + v_t k_t^T
        np.add(heads[:n], update[:n], out=heads[:n])
        np.matmul(heads[:n], r_col[t], out=y[t])  # y_t = S r_t
        start += n
    out = np.empty((T, H, N), dtype=_F32)
    out[order] = y[..., 0]
    return out
