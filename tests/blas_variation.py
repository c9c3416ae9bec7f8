"""A stand-in for a BLAS whose rounding depends on how many rows a product gets.

MKL and OpenBLAS pick other kernels for other row counts on AVX-512 and ARM CPUs, so there a row's
results change in the last bits with its batch companions, the batch size or the chunking (1.9e-6 seen
on an AVX-512 AMD EPYC), while this AVX2 test machine gives bitwise equal rows. Tests that compare
different batchings can run under :func:`vary_rounding_by_row_count`, so that they check what
docstream promises on every CPU (agreement within a stated tolerance) rather than what one BLAS does.
"""
from __future__ import annotations

import pytest
import torch

from docstream.model import base, v6, v7

#: the relative change of a product's results: about one float32 ulp, as another summation order gives
ULPS = 2.0 ** -23


def _row_dependent(real):
    def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = real(x, w)
        rows = out.numel() // max(out.shape[-1], 1)
        k = rows % 7 % 3 - 1  # -1, 0 or +1: row counts round differently from most others
        return out if k == 0 else out + out * (k * ULPS)
    return matmul


def vary_rounding_by_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every model matrix product round differently for different row counts (until the test ends)."""
    fake = _row_dependent(base.matmul)
    for module in (base, v6, v7):  # v6 and v7 import matmul by name
        monkeypatch.setattr(module, "matmul", fake)
