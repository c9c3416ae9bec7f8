"""The store stage: a run's output folder (commit log, Parquet parts, snapshots), the typed settings it
records, the schemas of every table docstream writes, the read API the task heads use, and the
check behind ``docstream verify``.

Names are imported on first use, so the command line can read :mod:`docstream.store.config` (to build
its flags) without loading pyarrow."""
from __future__ import annotations

from docstream.lazy import lazy_exports

_EXPORTS = {
    "docstream.store.config": ("RunConfig", "build_config"),
    "docstream.store.run_store": ("Problem", "Progress", "RunFolderError", "RunLockedError", "RunStore",
                                  "SnapshotRef", "StoreDamagedError"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
