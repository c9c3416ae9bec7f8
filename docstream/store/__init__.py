"""The store stage: a run's output folder (commit log, Parquet parts, snapshots), the typed settings it
records, the schemas of every table docstream writes, the read API the task heads use, and the
check behind ``docstream verify``."""

from docstream.store.config import RunConfig, build_config
from docstream.store.run_store import (
                                       Problem,
                                       Progress,
                                       RunFolderError,
                                       RunLockedError,
                                       RunStore,
                                       SnapshotRef,
                                       StoreDamagedError,
)

__all__ = ["Problem", "Progress", "RunConfig", "RunFolderError", "RunLockedError", "RunStore", "SnapshotRef",
           "StoreDamagedError", "build_config"]
