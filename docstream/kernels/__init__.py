"""WKV operators: a pure-PyTorch reference per RWKV version plus compiled CPU and CUDA kernels.

Every op follows one contract: it takes an initial state and returns ``(out, final_state)``; the state
passed in is never modified. ``backend`` picks the implementation: ``"auto"`` (compiled kernel for the
tensors' device, falling back to the reference with one warning when it cannot be built), ``"cuda"``,
``"cpu"`` or ``"torch"`` (the reference).

Gradients: ``wkv7`` is differentiable with every backend; with ``"auto"``, ``"cpu"`` and ``"cuda"`` it
runs a compiled backward (:func:`wkv7_train`: the forward checkpoints the state every few tokens, the
backward recomputes within a block) and returns gradients for r, w, k, v, a, b and the initial state.
``wkv4`` and ``wkv6`` take their gradients through the reference (``"auto"`` / ``"torch"``).
``linear_i8`` multiplies by int8 weight matrices (:mod:`docstream.model.quant`), with a reference too.
Nothing is compiled at import time.
"""
from docstream.kernels.autograd import wkv7_train
from docstream.kernels.dispatch import BACKENDS, linear_i8, wkv4, wkv6, wkv7
from docstream.kernels.reference import linear_i8_ref, wkv4_ref, wkv6_ref, wkv7_ref

__all__ = ["BACKENDS", "linear_i8", "linear_i8_ref", "wkv4", "wkv4_ref", "wkv6", "wkv6_ref", "wkv7", "wkv7_ref",
           "wkv7_train"]
