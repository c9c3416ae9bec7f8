"""Fixed-size vectors for a chunk, computed while it streams.

* ``last``:  final-layer hidden state (after ``ln_out``) at the chunk's last token   [B, C]
* ``mean``:  final-layer hidden states averaged over the chunk's tokens               [B, C]
* ``state``: the last layer's recurrent WKV state, normalized and reduced to a vector [B, C]:
  RWKV-5.2/6/7 keep one matrix per head; each head's matrix is divided by its RMS and averaged over
  its key axis (RWKV-7 stores [value, key], RWKV-5.2/6 [key, value]), giving one value per channel.
  RWKV-4 keeps per-channel running sums a/b, whose ratio is the average value it currently attends to.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the pooling names must not import torch (fast search imports them)
    from torch import Tensor

    from docstream.model.state import State

POOLINGS = ("last", "mean", "state")
#: the run's own vectors that search uses when asked for them (``--pooling``): chosen with random weights by an
#: earlier bench/retrieval_eval.py (recall@10 0.24 for "mean", 0.20 "state", 0.14 "last"); search's default
#: dense vectors are now an embedder's (docstream.tasks.embedder), see bench/RESULTS.md, "Retrieval"
DEFAULT_POOLING = "mean"


def state_vector(state: State) -> Tensor:
    """[B, C] fp32 vector of the last layer's WKV state (see the module docstring)."""
    wkv = state.wkv[:, -1].float()
    if state.version == "4":
        num, den = wkv[:, 0], wkv[:, 1]
        return num / den.clamp_min(1e-30)
    key_axis = -1 if state.version == "7" else -2
    rms = wkv.square().mean(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-30)
    return (wkv / rms).mean(dim=key_axis).flatten(1)


def pool(hidden_last: Tensor, state: State) -> dict[str, Tensor]:
    """All poolings of a batch of chunks: hidden_last [B, T, C] final-layer outputs, state after them."""
    h = hidden_last.float()
    return {"last": h[:, -1], "mean": h.mean(dim=1), "state": state_vector(state)}
