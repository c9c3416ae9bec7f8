"""RWKV-7 WKV with a compiled backward: :func:`wkv7_train`, differentiable wrt every input and the state.

The forward runs the compiled kernel and saves the fp32 state every :data:`CHUNK` tokens (checkpoints
``[B, H, ceil(T/CHUNK), N, N]``); the backward walks those blocks of tokens in reverse, recomputes the
states inside a block from its checkpoint and accumulates the gradients of r, w, k, v, a, b and of the
initial state, given the gradients of y and of the final state. The maths (with S indexed
[value, key] and G the gradient wrt S_t):

    G += dy_t^T r_t ;  dr_t = S_t^T dy_t ;  dv_t = G k_t ;  dk_t = G^T v_t ;  dsa = G b_t ;
    db_t = G^T (S_{t-1} a_t) ;  dw_t = diag(S_{t-1}^T G) ;  da_t = S_{t-1}^T dsa ;
    G <- G diag(w_t) + dsa^T a_t      (the gradient wrt S_{t-1}; after token 0, the initial state's)

Kernels: ``docstream/kernels/csrc/wkv7_train_cpu.cpp`` (fp32, and fp64 so that
``torch.autograd.gradcheck`` can check it) and ``wkv7_train_cuda.cu`` (fp32/bf16/fp16 inputs, fp32
accumulation). Gradients come back in the dtype of their input.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from docstream.kernels import build

#: tokens between two state checkpoints: memory B*H*N*N*4*T/CHUNK bytes, recomputation of one block
CHUNK = build.TRAIN_CHUNK

_HALF_TYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor) -> None:
    xs = (r, w, k, v, a, b)
    if r.dim() != 4 or any(x.shape != r.shape for x in xs):
        got = ", ".join(f"{n}{tuple(x.shape)}" for n, x in zip("rwkvab", xs))
        raise ValueError(f"wkv7: r,w,k,v,a,b must share one 4-d shape, got {got}")
    B, _, H, N = r.shape
    if tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"wkv7: state must have shape {(B, H, N, N)}, got {tuple(state.shape)}")
    devices = {str(x.device) for x in (*xs, state)}
    if len(devices) > 1:
        raise ValueError(f"wkv7: all tensors must be on one device, got {sorted(devices)}")


def _rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype`` with a contiguous last dimension (other strides are kept)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


class _Prepared:
    """The extension and the dtypes the kernels take for one call."""

    def __init__(self, device_type: str, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                 state: Tensor):
        if device_type == "cpu":
            self.ext = build.load_cpu_train()
            f64 = all(x.dtype == torch.float64 for x in (r, w, k, v, a, b, state))
            self.io = self.decay = self.state = torch.float64 if f64 else torch.float32
        else:
            self.ext = build.load_cuda_train(r.shape[-1])  # ValueError for a head size it does not support
            dtypes = {x.dtype for x in (r, k, v, a, b)}
            self.io = dtypes.pop() if len(dtypes) == 1 and r.dtype in _HALF_TYPES else torch.float32
            self.decay = self.state = torch.float32

    def inputs(self, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> list[Tensor]:
        io = self.io
        return [_rows(r, io), _rows(w, self.decay), _rows(k, io), _rows(v, io), _rows(a, io), _rows(b, io)]


class WKV7Function(torch.autograd.Function):
    """The autograd node of :func:`wkv7_train`; the device type picks the kernels."""

    @staticmethod
    def forward(ctx, device_type: str, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                state: Tensor) -> tuple[Tensor, Tensor]:
        prep = _Prepared(device_type, r, w, k, v, a, b, state)
        y, s_out, ckpt = prep.ext.wkv7_forward_train(*prep.inputs(r, w, k, v, a, b),
                                                     state.to(prep.state).contiguous(), CHUNK)
        ctx.prep = prep
        ctx.dtypes = tuple(x.dtype for x in (r, w, k, v, a, b, state))
        ctx.save_for_backward(r, w, k, v, a, b, ckpt)
        # y in the inputs' dtype (as the references), the state fp32 (fp64 for an fp64 call)
        return y.to(r.dtype), s_out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor | None, ds: Tensor | None):
        r, w, k, v, a, b, ckpt = ctx.saved_tensors
        prep: _Prepared = ctx.prep
        B, _, H, N = r.shape
        dy = torch.zeros_like(r, dtype=prep.io) if dy is None else _rows(dy, prep.io)
        if ds is None:
            ds = torch.zeros(B, H, N, N, dtype=prep.state, device=r.device)
        ds = ds.to(prep.state).contiguous()
        grads = prep.ext.wkv7_backward(*prep.inputs(r, w, k, v, a, b), dy, ds, ckpt, CHUNK)
        grads = [g if g.dtype == dt else g.to(dt) for g, dt in zip(grads, ctx.dtypes)]
        needed = ctx.needs_input_grad[1:]
        return (None, *(g if need else None for g, need in zip(grads, needed)))


def wkv7_train(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor,
               backend: str = "auto") -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV through the compiled kernels, differentiable wrt r, w, k, v, a, b and ``state``.

    Same arguments and results as :func:`docstream.kernels.reference.wkv7_ref`: r, w, k, v, a, b
    ``[B, T, H, N]``, state ``[B, H, N, N]`` indexed [value, key]; returns y ``[B, T, H, N]`` in the
    inputs' dtype and the final state ``[B, H, N, N]`` in fp32 (fp64 when every input is fp64, CPU only).
    ``backend``: ``"cpu"`` / ``"cuda"`` (the tensors must live there; a failed build raises
    :class:`~docstream.kernels.build.BuildError`) or ``"auto"`` (the tensors' device). For the
    reference, or for a fallback when a build fails, use :func:`docstream.kernels.wkv7`.
    """
    _check(r, w, k, v, a, b, state)
    device_type = r.device.type
    if backend == "auto":
        backend = device_type
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"wkv7_train: backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend != device_type:
        raise ValueError(f"WKV backend {backend!r} needs {backend.upper()} tensors, got tensors on "
                         f"{device_type!r}; move them or use backend='auto'")
    return WKV7Function.apply(device_type, r, w, k, v, a, b, state)
