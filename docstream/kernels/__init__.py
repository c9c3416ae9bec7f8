"""WKV operators: a pure-PyTorch reference per RWKV version plus compiled CPU and CUDA kernels.

Every op follows one contract: it takes an initial state and returns ``(out, final_state)``; the state
passed in is never modified. ``backend`` picks the implementation: ``"auto"`` (compiled kernel for the
tensors' device, falling back to the reference with one warning when it cannot be built), ``"cuda"``,
``"cpu"`` or ``"torch"`` (the reference).
"""
from docstream.kernels.dispatch import BACKENDS, wkv4, wkv6, wkv7
from docstream.kernels.reference import wkv4_ref, wkv6_ref, wkv7_ref

__all__ = ["BACKENDS", "wkv4", "wkv6", "wkv7", "wkv4_ref", "wkv6_ref", "wkv7_ref"]
