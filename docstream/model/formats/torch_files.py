"""Reading PyTorch state-dict files: BlinkDL's ``.pth`` and Hugging Face's ``pytorch_model.bin`` (and its shards)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def read_state_dict_file(path: Path) -> dict[str, Tensor]:
    """The state dict a PyTorch file holds (a BlinkDL ``.pth``, a ``pytorch_model.bin`` or one of its shards),
    memory-mapped unless the file is in the legacy (non-zip) format."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # torch raises many types for a damaged file; report them all alike
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
                         f"expected a BlinkDL RWKV .pth (or pytorch_model.bin) file, complete and not "
                         f"truncated") from err
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors; expected a BlinkDL RWKV .pth "
                         f"(or pytorch_model.bin) file")
    return sd
