"""RWKV-7's WKV in chunks, parallel in time: the readable PyTorch form of a tensor-core kernel.

The recurrence of :func:`docstream.kernels.reference.wkv7_ref`, per head, with the state ``S`` [N, N]
indexed [value, key] and row vectors ``r_t, w_t, k_t, v_t, a_t, b_t`` [N]:

    S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t^T) b_t + v_t^T k_t        y_t = S_t r_t^T

walks the tokens one by one. Within a chunk of ``L`` tokens the same result comes from small matrix
products, so a kernel can use matrix units and walk ``T / L`` chunks instead of ``T`` tokens (the
generalized delta rule of fla's ``chunk_dplr`` and of the "WY / UT" form of DeltaNet):

* Write ``u_t = S_{t-1} a_t^T`` ([N], a column per token: what the state gives up to ``a_t``). Then
  ``S_t = S_{t-1} diag(w_t) + u_t b_t + v_t^T k_t``, and unrolled from the chunk's first state ``S_0``,
  with ``G_t = w_1 * ... * w_t`` (elementwise, so ``G_t / G_s`` is the decay from token ``s`` to ``t``):

      S_t = S_0 diag(G_t) + sum_{s <= t} (u_s b_s + v_s^T k_s) diag(G_t / G_s)

* ``u`` depends on earlier ``u`` through a strictly lower-triangular ``L x L`` system: with
  ``P[t, s] = sum_k a_t[k] b_s[k] G_{t-1}[k] / G_s[k]`` and ``Q[t, s]`` the same with ``k_s`` for ``b_s``
  (``s < t``), ``U = (I - P)^-1 ((a * G_prev) S_0^T + Q V)``: one triangular solve per chunk.
* The outputs and the chunk's last state are then products of ``U`` and ``V`` with decay-weighted
  scores: ``Y = (r * G) S_0^T + R_b U + R_k V`` with ``R_b[t, s] = sum_k r_t[k] b_s[k] G_t[k] / G_s[k]``
  (``s <= t``), and ``S_L = S_0 diag(G_L) + U^T (b * G_L / G) + V^T (k * G_L / G)``.

Decay ratios are taken as ``exp`` of differences of cumulative log decays, and only where ``s <= t`` (or
``s < t``): they never exceed 1, so nothing overflows however strong the decay. This is the reference a
fast chunked kernel is checked against, not a fast kernel itself: the ratios are materialised as an
``[L, L, N]`` tensor per chunk and head. The state stays fp32 (``(out, final_state)``, as every WKV op).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CHUNK", "wkv7_chunked_ref"]

#: tokens per chunk by default (fla's chunked RWKV-7 kernels use 16 to 64)
CHUNK = 16


def wkv7_chunked_ref(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor,
                     chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV computed ``chunk`` tokens at a time; same shapes, maths and result as
    :func:`~docstream.kernels.reference.wkv7_ref` (to rounding): r, w, k, v, a, b [B, T, H, N] (w the decay
    multiplier in [0, 1]), state [B, H, N, N] fp32 indexed [value, key]. Returns (y [B, T, H, N] in the
    inputs' dtype, final state [B, H, N, N]). fp64 inputs run in fp64, everything else in fp32."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 token, got {chunk}")
    if r.dim() != 4 or state.dim() != 4:
        raise ValueError(f"expected r, w, k, v, a, b as [B, T, H, N] and state as [B, H, N, N]; got r "
                         f"{tuple(r.shape)}, state {tuple(state.shape)}")
    compute = torch.float64 if r.dtype == torch.float64 else torch.float32
    # [B, H, T, N]: heads lead, so each chunk is a batch of [L, N] matrices
    rf, wf, kf, vf, af, bf = (x.to(compute).transpose(1, 2) for x in (r, w, k, v, a, b))
    s = state.to(compute)
    # log decays; a decay of exactly 0 becomes the smallest normal number (its ratios are still 0)
    log_w = torch.log(wf.clamp_min(torch.finfo(compute).tiny))
    ys = []
    for start in range(0, r.shape[1], chunk):
        part = slice(start, start + chunk)
        y, s = _chunk(rf[:, :, part], log_w[:, :, part], kf[:, :, part], vf[:, :, part], af[:, :, part],
                      bf[:, :, part], s)
        ys.append(y)
    y = torch.cat(ys, dim=2) if ys else rf.new_zeros(rf.shape)
    return y.transpose(1, 2).to(r.dtype), s.to(state.dtype if state.dtype == torch.float64 else torch.float32)


def _chunk(r: Tensor, log_w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
           s0: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: inputs [B, H, L, N], s0 [B, H, N, N]; returns (y [B, H, L, N], the state after it)."""
    length = r.shape[2]
    cum = log_w.cumsum(dim=2)            # log G_t (inclusive)
    prev = cum - log_w                   # log G_{t-1}
    t_idx = torch.arange(length, device=r.device)
    upto = t_idx[:, None] >= t_idx[None, :]        # s <= t
    before = t_idx[:, None] > t_idx[None, :]       # s < t
    # decay from token s to token t (inclusive of t's own decay) and to just before t: [B, H, L, L, N]
    to_t = _ratios(cum, cum, upto)
    to_before = _ratios(prev, cum, before)
    # the triangular system for u, and its right-hand side
    p = torch.einsum("bhtn,bhsn,bhtsn->bhts", a, b, to_before)
    q = torch.einsum("bhtn,bhsn,bhtsn->bhts", a, k, to_before)
    rhs = torch.einsum("bhtn,bhvn->bhtv", a * prev.exp(), s0) + q @ v
    eye = torch.eye(length, dtype=r.dtype, device=r.device)
    u = torch.linalg.solve_triangular(eye - p, rhs, upper=False, unitriangular=True)   # [B, H, L, N(value)]
    # outputs: from the chunk's first state, and from each earlier (or the same) token's u and v
    r_b = torch.einsum("bhtn,bhsn,bhtsn->bhts", r, b, to_t)
    r_k = torch.einsum("bhtn,bhsn,bhtsn->bhts", r, k, to_t)
    y = torch.einsum("bhtn,bhvn->bhtv", r * cum.exp(), s0) + r_b @ u + r_k @ v
    # the state after the chunk's last token
    last = cum[:, :, -1:]                                  # log G_L [B, H, 1, N]
    to_end = (last - cum).exp()                            # G_L / G_s, each <= 1
    s = (s0 * last.exp() + torch.einsum("bhsv,bhsn->bhvn", u, b * to_end)
         + torch.einsum("bhsv,bhsn->bhvn", v, k * to_end))
    return y, s


def _ratios(num: Tensor, den: Tensor, mask: Tensor) -> Tensor:
    """exp(num[t] - den[s]) where ``mask[t, s]``, else 0: [B, H, L, L, N] (every kept value is <= 1)."""
    diff = num[:, :, :, None, :] - den[:, :, None, :, :]
    return diff.masked_fill(~mask[:, :, None], float("-inf")).exp()
