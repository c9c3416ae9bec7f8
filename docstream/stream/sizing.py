"""Default batch size and dtype of a run for its device.

On a CPU a run keeps its long-standing defaults (batch 8, fp32): the model's matrix products are
already efficient at small batches there. A GPU is fed best with many rows at once (its rate rose
from 430k to 579k tok/s between batch 16 and 64 on an H100 at the 169M shape) and in bf16, so on
CUDA the default batch is taken from the free GPU memory, up to :data:`MAX_GPU_BATCH` rows, and the
default dtype is bf16.
(:func:`docstream.store.config.default_dtype`; part of a run's identity, so decided with its settings).
"""
from __future__ import annotations

#: batch size on a CPU when none is given
CPU_BATCH = 8
#: the most rows a GPU run takes when none is given (past this, rates barely rise while memory does)
MAX_GPU_BATCH = 64
#: the batch a Ray run's GPU workers use when none is given (the driver cannot see their memory)
RAY_GPU_BATCH = 32
#: the share of the free GPU memory a run's activations and states may take by default
GPU_MEMORY_SHARE = 0.5
#: activations live at once per token and channel during a forward, in units of the activation dtype
#: (x, its norms, r/k/v/w/a/g and their mixes, the FFN's 4C intermediate): a generous estimate
ACTIVATIONS_PER_TOKEN = 32


def default_batch_size(model, chunk_len: int) -> int:
    """The batch size for ``model`` (loaded on its device) at ``chunk_len`` tokens per chunk."""
    import torch

    device = model.device
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    c = model.config
    activation_bytes = torch.finfo(model.dtype).bits // 8
    state_bytes = sum(t.numel() * t.element_size() for t in model.init_state(1).parts().values())
    per_row = chunk_len * c.n_embd * activation_bytes * ACTIVATIONS_PER_TOKEN + 3 * state_bytes
    return max(1, min(MAX_GPU_BATCH, int(free * GPU_MEMORY_SHARE // per_row)))
