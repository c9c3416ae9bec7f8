"""Backend selection for the WKV ops.

``backend`` is one of:

* ``"torch"`` -- the pure-PyTorch reference (:mod:`docstream.kernels.reference`), any device.
* ``"cpu"`` / ``"cuda"`` -- the compiled kernel for that device (built on first use, see
  :mod:`docstream.kernels.build`). The tensors must live on that device (else ``ValueError``); a build
  failure raises :class:`~docstream.kernels.build.BuildError` (a ``RuntimeError``) that says what to
  install and quotes the compiler's last lines.
* ``"auto"`` -- the compiled kernel for the tensors' device; when it cannot be built, the reference,
  after one ``warnings.warn`` per process and device type naming what to install. The reference is
  also used for other device types.

Gradients: when autograd needs the op's gradient (``torch.is_grad_enabled()`` and an input requires
grad), ``wkv7`` runs the compiled training kernels, a forward that checkpoints the state and a compiled
backward (:func:`docstream.kernels.autograd.wkv7_train`), with ``"auto"``, ``"cpu"`` and ``"cuda"``
alike; ``"auto"`` falls back to the reference when they cannot be built. The compiled ``wkv4`` and
``wkv6`` kernels are forward-only: ``"auto"`` uses the differentiable reference for them, an explicit
``"cpu"`` / ``"cuda"`` raises ``RuntimeError``.

The compiled ops have the references' contract: same arguments, output in the input dtype, a new
fp32 state (the one passed in is never modified), any ``T >= 1`` and ``B >= 1``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from docstream.kernels import autograd, build, reference

BACKENDS = ("auto", "cuda", "cpu", "torch")

Op = Callable[..., tuple[Tensor, Tensor]]

_REFERENCES: dict[str, Op] = {
    "wkv4": reference.wkv4_ref,
    "wkv6": reference.wkv6_ref,
    "wkv7": reference.wkv7_ref,
}

_HALF_TYPES = (torch.float32, torch.bfloat16, torch.float16)

#: device types for which the "auto" fallback warning was already shown in this process
_WARNED: set[str] = set()


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a known backend, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown WKV backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


# --------------------------------------------------------------------------------------------------
# argument preparation shared by the compiled ops


def _rows(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype`` with a contiguous last dimension (other strides, even 0, are kept)."""
    if x.dtype != dtype:
        x = x.to(dtype)
    if x.dim() and x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _common_dtype(xs: tuple[Tensor, ...]) -> torch.dtype:
    """The dtype all of ``xs`` share when it is fp32/bf16/fp16, else fp32 (mixed inputs run in fp32)."""
    dtype = xs[0].dtype
    if dtype in _HALF_TYPES and all(x.dtype == dtype for x in xs):
        return dtype
    return torch.float32


def _check_same_shape(op: str, names: str, xs: tuple[Tensor, ...], dims: int) -> None:
    shape = xs[0].shape
    if len(shape) != dims or any(x.shape != shape for x in xs):
        got = ", ".join(f"{n}{tuple(x.shape)}" for n, x in zip(names.split(","), xs))
        raise ValueError(f"{op}: {names} must share one {dims}-d shape, got {got}")


def _check_state(op: str, state: Tensor, shape: tuple[int, ...], device_type: str) -> Tensor:
    """The state in fp32; the CPU kernels read any batch stride (a layer's slice of a stacked state)."""
    if tuple(state.shape) != shape:
        raise ValueError(f"{op}: state must have shape {shape}, got {tuple(state.shape)}")
    state = state.float()
    return state if device_type == "cpu" else state.contiguous()


def _check_out(op: str, out: Tensor | None, state: Tensor) -> None:
    """Checked once, in :func:`_call`, for every backend (the C++ kernels check their own arguments)."""
    if out is not None and (out.shape != state.shape or out.dtype != torch.float32 or out.device != state.device
                            or (out.requires_grad and torch.is_grad_enabled())):
        raise ValueError(f"{op}: out must be a float32 tensor of the state's shape {tuple(state.shape)} on "
                         f"{state.device} that needs no gradient, got {out.dtype} {tuple(out.shape)} on {out.device}"
                         f"{' requiring grad' if out.requires_grad else ''}")


def _into(out: Tensor | None, s: Tensor) -> Tensor:
    """The new state ``s``, copied into ``out`` when one is given."""
    return s if out is None or s is out else out.copy_(s)


def _check_device(op: str, device: torch.device, xs: tuple[Tensor, ...]) -> None:
    if any(x.device != device for x in xs):
        raise ValueError(f"{op}: all tensors must be on one device, got "
                         f"{sorted({str(x.device) for x in xs})}")


# --------------------------------------------------------------------------------------------------
# the compiled ops


def _wkv4_compiled(device_type: str) -> Op:
    def wkv4_compiled(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Tensor,
                      out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_same_shape("wkv4", "k,v", (k, v), 3)
        B, _, C = k.shape
        _check_device("wkv4", k.device, (w, u, v, state))
        if w.numel() != C or u.numel() != C:
            raise ValueError(f"wkv4: w and u must have C={C} elements, got {w.numel()} and {u.numel()}")
        state = _check_state("wkv4", state, (B, 3, C), device_type)
        w, u = w.float().reshape(C).contiguous(), u.float().reshape(C).contiguous()
        if device_type == "cpu":
            ext = build.load_cpu()
            y, s = ext.wkv4(w, u, _rows(k, torch.float32), _rows(v, torch.float32), state, out)
        else:
            ext = build.load_cuda_wkv4()
            dtype = _common_dtype((k, v))
            y, s = ext.wkv4(w, u, _rows(k, dtype), _rows(v, dtype), state)
        return y.to(k.dtype), _into(out, s)

    return wkv4_compiled


def _wkv6_compiled(device_type: str) -> Op:
    def wkv6_compiled(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor,
                      state: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_same_shape("wkv6", "r,k,v,w", (r, k, v, w), 4)
        B, _, H, N = r.shape
        _check_device("wkv6", r.device, (k, v, w, u, state))
        if u.numel() != H * N:
            raise ValueError(f"wkv6: u must have shape ({H}, {N}), got {tuple(u.shape)}")
        state = _check_state("wkv6", state, (B, H, N, N), device_type)
        u = u.float().reshape(H, N).contiguous()
        w = _rows(w, torch.float32)  # the decay is always fp32; an expanded (stride-0) view stays a view
        if device_type == "cpu":
            ext = build.load_cpu()
            f32 = torch.float32
            y, s = ext.wkv6(_rows(r, f32), _rows(k, f32), _rows(v, f32), w, u, state, out)
        else:
            ext = build.load_cuda(N)  # ValueError for an unsupported head size
            dtype = _common_dtype((r, k, v))
            y, s = ext.wkv6(_rows(r, dtype), _rows(k, dtype), _rows(v, dtype), w, u, state)
        return y.to(r.dtype), _into(out, s)

    return wkv6_compiled


def _wkv7_compiled(device_type: str) -> Op:
    def wkv7_compiled(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
                      state: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_same_shape("wkv7", "r,w,k,v,a,b", (r, w, k, v, a, b), 4)
        B, _, H, N = r.shape
        _check_device("wkv7", r.device, (w, k, v, a, b, state))
        state = _check_state("wkv7", state, (B, H, N, N), device_type)
        w = _rows(w, torch.float32)
        if device_type == "cpu":
            ext = build.load_cpu()
            f32 = torch.float32
            y, s = ext.wkv7(_rows(r, f32), w, _rows(k, f32), _rows(v, f32), _rows(a, f32), _rows(b, f32), state,
                            out)
        else:
            ext = build.load_cuda(N)  # ValueError for an unsupported head size
            dtype = _common_dtype((r, k, v, a, b))
            y, s = ext.wkv7(_rows(r, dtype), w, _rows(k, dtype), _rows(v, dtype), _rows(a, dtype),
                            _rows(b, dtype), state)
        return y.to(r.dtype), _into(out, s)

    return wkv7_compiled


_COMPILED: dict[str, dict[str, Op]] = {
    device: {"wkv4": _wkv4_compiled(device), "wkv6": _wkv6_compiled(device), "wkv7": _wkv7_compiled(device)}
    for device in ("cpu", "cuda")
}


def linear_rows_kernel(backend: str, device: torch.device, dtype: torch.dtype) -> Op | None:
    """The compiled few-row product ``linear_rows(x, weight) = x @ weight.T`` that the decoding steps
    of a model on ``device`` in ``dtype`` use, or None where it does not apply (not an fp32 CPU model,
    backend 'torch' or 'cuda') or, with backend 'auto', where the CPU extension cannot be built
    (torch's product is used instead; the WKV ops warn about the build once). ``weight`` is [out, in]
    with any strides: ``nn.Linear``'s weight, or a transposed [in, out] matrix."""
    if backend not in ("auto", "cpu") or torch.device(device).type != "cpu" or dtype != torch.float32:
        return None
    try:
        return build.load_cpu().linear_rows
    except build.BuildError:
        if backend == "cpu":
            raise
        return None


def linear_i8(x: Tensor, q: Tensor, scale: Tensor, backend: str = "auto") -> Tensor:
    """x [..., K] @ (q [O, K] int8 * scale [O])^T -> [..., O] in x's dtype: the product of an int8 weight
    matrix stored with one fp32 scale per output row (:mod:`docstream.model.quant`).

    The compiled kernels read the weights as int8 (few rows) or widen one bounded block of them at a time
    (many rows); no fp32 copy of the matrix is made. ``backend`` as for the WKV ops; "auto" falls back to
    :func:`~docstream.kernels.reference.linear_i8_ref` with one warning when the kernels cannot be built."""
    check_backend(backend)
    if q.dtype != torch.int8 or q.dim() != 2 or x.shape[-1] != q.shape[1] or scale.numel() != q.shape[0]:
        raise ValueError(f"linear_i8: needs x [..., K], q [O, K] int8 and scale [O]; got x {tuple(x.shape)}, "
                         f"q {tuple(q.shape)} {q.dtype}, scale {tuple(scale.shape)}")
    _check_device("linear_i8", x.device, (q, scale))
    device_type = x.device.type
    if backend == "torch" or (backend == "auto" and device_type not in ("cpu", "cuda")):
        return reference.linear_i8_ref(x, q, scale)
    if backend != "auto" and backend != device_type:
        raise ValueError(f"linear_i8: backend {backend!r} cannot run tensors on {x.device}")
    flat = x.reshape(-1, x.shape[-1])
    try:
        if device_type == "cpu":
            y = build.load_cpu().linear_i8(flat.float(), q, scale).to(x.dtype)
        else:
            y = build.load_cuda_i8().linear_i8(flat if x.dtype in _HALF_TYPES else flat.float(), q, scale)
    except build.BuildError as err:
        if backend != "auto":
            raise
        _warn_fallback(device_type, err, "int8 products")
        return reference.linear_i8_ref(x, q, scale)
    return y.to(x.dtype).reshape(*x.shape[:-1], q.shape[0])


def _install_hint(device_type: str) -> str:
    return build.CPU_INSTALL_HINT if device_type == "cpu" else build.cuda_install_hint()


def _warn_fallback(device_type: str, err: build.BuildError, what: str = "WKV kernels") -> None:
    key = device_type if what == "WKV kernels" else f"{device_type} {what}"
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"docstream: could not build the compiled {device_type.upper()} {what} ({err.reason}); using the "
        f"slow pure-PyTorch reference instead. To enable them, {_install_hint(device_type)}. "
        f"backend={device_type!r} raises the error with the compiler output.",
        RuntimeWarning, stacklevel=4)


def _auto(op: str, device_type: str) -> Op:
    compiled, ref = _COMPILED[device_type][op], _REFERENCES[op]

    def auto(*args: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if device_type == "cuda" and op != "wkv4" and args[0].dim() == 4 \
                and not build.cuda_supports(args[0].shape[-1]):
            y, s = ref(*args)  # head size beyond the CUDA kernels: the reference handles it
            return y, _into(out, s)
        try:
            return compiled(*args, out=out)
        except build.BuildError as err:  # raised by the loader, before any work was done
            _warn_fallback(device_type, err)
            y, s = ref(*args)
            return y, _into(out, s)

    auto.__name__ = f"{op}_auto_{device_type}"
    return auto


_AUTO: dict[str, dict[str, Op]] = {device: {op: _auto(op, device) for op in _REFERENCES}
                                   for device in ("cpu", "cuda")}


def resolve(op: str, backend: str, device_type: str) -> Op:
    """The implementation of ``op`` for ``backend`` on tensors living on ``device_type``."""
    check_backend(backend)
    if op not in _REFERENCES:
        raise ValueError(f"unknown WKV op {op!r}; expected one of {', '.join(_REFERENCES)}")
    if backend == "torch":
        return _REFERENCES[op]
    if backend == "auto":
        return _AUTO[device_type][op] if device_type in _AUTO else _REFERENCES[op]
    if device_type != backend:
        raise ValueError(f"WKV backend {backend!r} needs {backend.upper()} tensors, got tensors on "
                         f"{device_type!r}; move them or use backend='auto'")
    return _COMPILED[backend][op]


def _needs_grad(*xs: Tensor) -> bool:
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _wkv7_grad(backend: str, device_type: str) -> Op:
    """wkv7 with the compiled backward; for "auto", the reference when it cannot be built or run."""
    def wkv7_grad(*args: Tensor) -> tuple[Tensor, Tensor]:
        if backend != "auto":
            return autograd.wkv7_train(*args, backend=backend)
        if device_type == "cuda" and args[0].dim() == 4 and not build.cuda_supports(args[0].shape[-1]):
            return reference.wkv7_ref(*args)
        try:
            return autograd.wkv7_train(*args, backend=device_type)
        except build.BuildError as err:  # raised by the loader, before any work was done
            _warn_fallback(device_type, err, "RWKV-7 training kernels")
            return reference.wkv7_ref(*args)

    return wkv7_grad


_GRAD: dict[tuple[str, str], Op] = {(backend, device): _wkv7_grad(backend, device)
                                    for backend in ("auto", "cpu", "cuda") for device in ("cpu", "cuda")}


def _call(op: str, backend: str, device_type: str, args: tuple[Tensor, ...],
          out: Tensor | None) -> tuple[Tensor, Tensor]:
    impl = _pick(op, backend, device_type, args)
    if out is None:
        return impl(*args)
    _check_out(op, out, args[-1])
    if impl is _COMPILED.get(device_type, {}).get(op) or impl is _AUTO.get(device_type, {}).get(op):
        return impl(*args, out=out)  # the compiled kernels write the new state into out themselves
    y, s = impl(*args)
    return y, _into(out, s)


def _pick(op: str, backend: str, device_type: str, xs: tuple[Tensor, ...]) -> Op:
    impl = resolve(op, backend, device_type)  # validates the backend and the device first
    if impl is _REFERENCES[op] or not _needs_grad(*xs):
        return impl
    if op == "wkv7":
        return _GRAD[backend, device_type]
    if backend == "auto":
        return _REFERENCES[op]  # differentiable
    raise RuntimeError(f"the compiled {backend!r} {op} kernels are forward-only; run under torch.no_grad() "
                       f"or use backend='torch' (or 'auto') for gradients")


def wkv4(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Tensor,
         backend: str = "auto", out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """RWKV-4 WKV; see :func:`docstream.kernels.reference.wkv4_ref` for shapes and maths.

    ``out`` (every op): a float32 tensor of the state's shape that receives the new state, which is
    then the state returned. It may be a slice of a larger tensor (e.g. one layer of a stacked state)
    and may be ``state`` itself.
    """
    return _call("wkv4", backend, k.device.type, (w, u, k, v, state), out)


def wkv6(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor,
         backend: str = "auto", out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """RWKV-5.2/6 WKV; see :func:`docstream.kernels.reference.wkv6_ref` for shapes and maths."""
    return _call("wkv6", backend, r.device.type, (r, k, v, w, u, state), out)


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor,
         backend: str = "auto", out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV; see :func:`docstream.kernels.reference.wkv7_ref` for shapes and maths.

    Differentiable wrt every input and ``state`` with every backend; the compiled backends take the
    compiled backward (:func:`docstream.kernels.autograd.wkv7_train`) when autograd needs it.
    """
    return _call("wkv7", backend, r.device.type, (r, w, k, v, a, b, state), out)
