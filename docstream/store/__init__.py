"""The store stage: a run's output folder (commit log, Parquet parts, snapshots), the typed settings it
records, the schemas of every table docstream writes, the read API the task heads use, and the
check behind ``docstream verify``.

Names are imported on first use, so the command line can read :mod:`docstream.store.config` (to build
its flags) without loading pyarrow."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "docstream.store.config": ("RunConfig", "build_config"),
    "docstream.store.run_store": ("Problem", "Progress", "RunFolderError", "RunLockedError", "RunStore",
                                  "SnapshotRef", "StoreDamagedError"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """Import ``name`` from its module on first use (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module 'docstream.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
