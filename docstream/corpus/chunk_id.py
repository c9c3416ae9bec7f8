"""What identifies a chunk everywhere: its document, its index there, and its token range.

:class:`ChunkId` is one chunk; :class:`ChunkIdColumns` many, as NumPy columns (the read side's
tables). The records that describe a chunk -- the engine's ``ChunkRecord``, a snapshot's
``SnapshotInfo``, the embedding rows and a FAISS index's id table -- extend these two instead of
repeating the fields.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

#: the fields (and table columns) that identify a chunk, in order
ID_FIELDS = ("doc_id", "chunk_index", "token_start", "token_end")


@dataclass(frozen=True)
class ChunkId:
    """Chunk ``chunk_index`` (from 0) of document ``doc_id``: its tokens ``[token_start, token_end)``."""

    doc_id: str
    chunk_index: int
    token_start: int
    token_end: int

    @property
    def chunk_id(self) -> ChunkId:
        """Just the identity (a record that extends :class:`ChunkId` without its other fields)."""
        return ChunkId(self.doc_id, self.chunk_index, self.token_start, self.token_end)


@dataclass(frozen=True)
class ChunkIdColumns:
    """Many chunk ids as columns: ``doc_id`` an object array of strings, ``chunk_index`` int32,
    ``token_start`` and ``token_end`` int64; row ``i`` is :meth:`row` ``(i)``."""

    doc_id: np.ndarray
    chunk_index: np.ndarray
    token_start: np.ndarray
    token_end: np.ndarray

    def __len__(self) -> int:
        return len(self.doc_id)

    def row(self, i: int) -> ChunkId:
        """The chunk id of row ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} is outside the id table's {len(self)} rows (a FAISS id is a row number)")
        return ChunkId(str(self.doc_id[i]), int(self.chunk_index[i]), int(self.token_start[i]),
                       int(self.token_end[i]))

    def ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The four id columns (of a subclass too, without its other columns)."""
        return self.doc_id, self.chunk_index, self.token_start, self.token_end

    @staticmethod
    def columns_of(table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The id columns of a pyarrow table that has them, in their NumPy types."""
        return (np.asarray(table.column("doc_id").to_pylist(), dtype=object),
                table.column("chunk_index").to_numpy().astype(np.int32),
                table.column("token_start").to_numpy().astype(np.int64),
                table.column("token_end").to_numpy().astype(np.int64))

    @staticmethod
    def empty_columns() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return np.empty(0, dtype=object), np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64)

    @classmethod
    def join(cls, parts: list) -> Any:
        """The rows of ``parts`` (non-empty, of this class), in order, every column concatenated."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))
