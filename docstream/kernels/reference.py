"""Pure-PyTorch WKV references: the readable maths every compiled kernel is checked against.

They are differentiable (outputs are gathered per token and stacked, not written into a
preallocated tensor, which would make autograd copy the whole output once per token).

Each op takes an initial state and returns ``(out, final_state)``. Inputs may be fp32, bf16 or fp16;
the recurrence always runs in fp32 and the output is returned in the dtype of the inputs. States are
fp32 and are never modified in place.

Shapes: B batch, T tokens, C channels, H heads, N head size.
"""
from __future__ import annotations

import torch
from torch import Tensor


def wkv4_ref(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """RWKV-4 WKV with the running-maximum trick that keeps ``exp`` finite.

    w: [C] log-decay per token (``-exp(time_decay)``, negative); u: [C] bonus of the current token
    (``time_first``); k, v: [B, T, C]; state: [B, 3, C] holding (a, b, p): numerator, denominator and
    the exponent both are scaled by. Returns y: [B, T, C] and the final state [B, 3, C].

        y_t = (e^p a + e^(u+k_t) v_t) / (e^p b + e^(u+k_t))
        a, b <- e^w a + e^k_t v_t, e^w b + e^k_t      (all kept relative to the exponent p)
    """
    w, u = w.float(), u.float()
    kf, vf = k.float(), v.float()
    a, b, p = (s.clone() for s in state.float().unbind(1))
    ys = []
    for t in range(k.shape[1]):
        kt, vt = kf[:, t], vf[:, t]
        ww = u + kt
        q = torch.maximum(p, ww)
        e1, e2 = torch.exp(p - q), torch.exp(ww - q)
        ys.append((e1 * a + e2 * vt) / (e1 * b + e2))
        ww = w + p
        q = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - q), torch.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    return torch.stack(ys, dim=1).to(k.dtype), torch.stack((a, b, p), dim=1)


def wkv6_ref(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """RWKV-5.2 / RWKV-6 WKV: a matrix-valued state per head with per-channel decay.

    r, k, v: [B, T, H, N]; w: [B, T, H, N] decay multiplier in (0, 1) (for RWKV-5.2 the same for
    every token); u: [H, N] bonus of the current token; state: [B, H, N, N] indexed [key, value].
    Returns y: [B, T, H, N] and the final state.

        y_t = r_t (diag(u) k_t^T v_t + S)
        S  <- diag(w_t) S + k_t^T v_t
    """
    rf, kf, vf, wf, uf = r.float(), k.float(), v.float(), w.float(), u.float()
    s = state.float().clone()
    ys = []
    for t in range(r.shape[1]):
        kv = kf[:, t, :, :, None] * vf[:, t, :, None, :]  # [B, H, N, N]
        ys.append((rf[:, t, :, :, None] * (uf[:, :, None] * kv + s)).sum(dim=2))
        s = wf[:, t, :, :, None] * s + kv
    return torch.stack(ys, dim=1).to(r.dtype), s


def wkv7_ref(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
             state: Tensor) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV: the generalized delta rule.

    r, w, k, v, a, b: [B, T, H, N], w the decay multiplier in (0, 1); the model passes
    a = -kk and b = kk * iclr. state: [B, H, N, N] indexed [value, key].
    Returns y: [B, T, H, N] and the final state.

        S <- S diag(w_t) + (S a_t^T) b_t + v_t^T k_t
        y_t = S r_t
    """
    rf, wf, kf, vf, af, bf = (x.float() for x in (r, w, k, v, a, b))
    s = state.float().clone()
    ys = []
    for t in range(r.shape[1]):
        sa = (s * af[:, t, :, None, :]).sum(dim=-1, keepdim=True)  # [B, H, N, 1]
        s = (s * wf[:, t, :, None, :] + sa * bf[:, t, :, None, :]
             + vf[:, t, :, :, None] * kf[:, t, :, None, :])
        ys.append((s * rf[:, t, :, None, :]).sum(dim=-1))
    return torch.stack(ys, dim=1).to(r.dtype), s


def linear_i8_ref(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """A product with int8 weights: x [..., K] @ (q [O, K] * scale [O, None])^T, computed in fp32 and
    returned in x's dtype. Each row o of the weight matrix is ``q[o] * scale[o]``."""
    return ((x.float() @ q.float().T) * scale.float()).to(x.dtype)
