"""RWKV models: checkpoint loading with version detection, per-version blocks, and the typed State.

Names are imported on first use (PEP 562), so that the torch-free modules of this package
(:mod:`docstream.model.pth_numpy`, :mod:`docstream.model.numpy_v7`, used by fast CLI queries) can be
imported without loading torch.
"""
from __future__ import annotations

from docstream.lazy import lazy_exports

_EXPORTS = {
    "docstream.model.base": ("Hidden", "RWKVModel"),
    "docstream.model.config": ("VERSIONS", "ModelConfig"),
    "docstream.model.loader": ("build_model", "detect_version", "file_fingerprint", "load_model", "read_checkpoint"),
    "docstream.model.state": ("State",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
