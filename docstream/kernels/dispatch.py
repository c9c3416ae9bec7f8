"""Backend selection for the WKV ops."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from docstream.kernels import reference

BACKENDS = ("auto", "cuda", "cpu", "torch")

_REFERENCES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "wkv4": reference.wkv4_ref,
    "wkv6": reference.wkv6_ref,
    "wkv7": reference.wkv7_ref,
}


def check_backend(backend: str) -> str:
    """Return ``backend`` if it names a known backend, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown WKV backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


def resolve(op: str, backend: str, device_type: str) -> Callable[..., tuple[Tensor, Tensor]]:
    """The implementation of ``op`` for ``backend`` on tensors living on ``device_type``."""
    check_backend(backend)
    if backend in ("auto", "torch"):
        return _REFERENCES[op]
    raise ValueError(f"the compiled {backend!r} WKV backend is not available in this build; "
                     f"use backend='torch' or 'auto'")


def wkv4(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Tensor,
         backend: str = "auto") -> tuple[Tensor, Tensor]:
    """RWKV-4 WKV; see :func:`docstream.kernels.reference.wkv4_ref` for shapes and maths."""
    return resolve("wkv4", backend, k.device.type)(w, u, k, v, state)


def wkv6(r: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor,
         backend: str = "auto") -> tuple[Tensor, Tensor]:
    """RWKV-5.2/6 WKV; see :func:`docstream.kernels.reference.wkv6_ref` for shapes and maths."""
    return resolve("wkv6", backend, r.device.type)(r, k, v, w, u, state)


def wkv7(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state: Tensor,
         backend: str = "auto") -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV; see :func:`docstream.kernels.reference.wkv7_ref` for shapes and maths."""
    return resolve("wkv7", backend, r.device.type)(r, w, k, v, a, b, state)
