"""The files of an index generation: the id table, writes that leave nothing half-done, checksum checks.

An index is derived data: whatever happens to its files, rebuilding it from the run's committed
embeddings restores it. So every failure here says which file is at fault and that a rebuild (or
freeing disk space and re-running) fixes it, and a failed write removes what it wrote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from docstream.checksum import sha256_file
from docstream.corpus.chunk_id import ChunkId, ChunkIdColumns
from docstream.files import DamagedFileError, DiskFullError, atomic_write_hashed
from docstream.store.reader import EmbeddingRows
from docstream.store.schemas import ID_TABLE_SCHEMA

__all__ = ["ChunkId", "DiskFullError", "IdTable", "IndexDamagedError", "file_problems", "l2_normalize",
           "last_generation", "rebuild_hint", "remove_unnamed"]

#: the names of the files an update writes: generation files and their temp files (``.NAME.tmp-PID``)
GENERATION_FILE = re.compile(r"^(?:index-(?P<generation>\d+)\.faiss|ids-\d+\.parquet|\..+\.tmp-\d+)$")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 copy of ``vectors`` ([n, d] or [d]) with every row scaled to unit length (zero rows stay zero)."""
    x = np.array(vectors, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


class IndexDamagedError(DamagedFileError):
    """A file of the current index generation is missing, unreadable, or differs from its recorded checksum.

    ``path``, ``problem`` and ``fix`` are the parts of the message (``docstream verify`` lists them).
    """

    def __init__(self, path: str | Path, problem: str, fix: str):
        super().__init__(f"{path} {problem}; {fix}")
        self.path, self.problem, self.fix = str(path), problem, fix


def rebuild_hint(directory: Path, factory: str | None = None, metric: str | None = None) -> str:
    """What fixes a damaged or stale index in ``directory`` (``OUT/index/<pooling>``): rebuilding it from the
    run's committed embeddings, with its ``factory`` and ``metric`` when they are known."""
    out, pooling = directory.parents[1], directory.name
    options = "" if factory is None else (f" --factory '{factory}'" if factory != "Flat" else "") + (
        f" --metric {metric}" if metric not in (None, "cosine") else "")
    keep = " (with its --factory and --metric if they were not Flat and cosine)" if factory is None else ""
    return (f"the index is derived data: rebuild it with `docstream index --run {out} --pooling {pooling}{options} "
            f"--rebuild`{keep} or `docstream verify --run {out} --repair`")


def last_generation(directory: Path) -> int:
    """The highest generation number among the index files in ``directory`` (0 when none), so a rebuild
    never reuses the name of a file a reader may still be opening."""
    matches = (GENERATION_FILE.match(p.name) for p in directory.iterdir())
    return max((int(m["generation"]) for m in matches if m and m["generation"]), default=0)


def remove_unnamed(directory: Path, keep: set[str]) -> None:
    """Delete the older generations and temp files of crashed updates: files named like the ones an update
    writes that are not in ``keep`` (anything else in ``directory`` is not docstream's, so it stays)."""
    for path in directory.iterdir():
        if path.name not in keep and GENERATION_FILE.match(path.name) and path.is_file():
            path.unlink()


def file_problems(directory: Path, named: dict[str, str | None]) -> list[tuple[Path, str]]:
    """``(path, what is wrong)`` for each file of ``named`` (name -> recorded sha256, None when the meta
    predates checksums) that is missing or whose content differs from its checksum."""
    problems = []
    for name, expected in named.items():
        path = directory / name
        if not path.is_file():
            problems.append((path, "is missing (meta.json names it)"))
            continue
        actual = sha256_file(path)
        if expected is not None and actual != expected:
            problems.append((path, f"has sha256 {actual[:16]}..., but meta.json records {expected[:16]}... "
                                   f"(the file was changed, truncated or corrupted)"))
    return problems


@dataclass(frozen=True)
class IdTable(ChunkIdColumns):
    """FAISS id -> chunk: row ``i`` (:meth:`row`) is the chunk of the vector with id ``i``."""

    @classmethod
    def of_rows(cls, rows: EmbeddingRows) -> IdTable:
        return cls(*rows.ids())

    @classmethod
    def concat(cls, first: IdTable, second: IdTable) -> IdTable:
        return cls.join([first, second])

    def write(self, path: Path) -> str:
        """Write the table as Parquet to ``path`` atomically (see :func:`atomic_write`); its sha256."""
        table = pa.table({"doc_id": self.doc_id.tolist(), "chunk_index": self.chunk_index,
                          "token_start": self.token_start, "token_end": self.token_end}, schema=ID_TABLE_SCHEMA)
        return atomic_write_hashed(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    @classmethod
    def read(cls, path: Path) -> IdTable:
        table = pq.ParquetFile(path).read(columns=ID_TABLE_SCHEMA.names)  # (read_table would import pyarrow.dataset)
        if not table.schema.equals(ID_TABLE_SCHEMA):
            raise ValueError(f"its columns are {table.schema}, not those of an id table")
        return cls(*cls.columns_of(table))
