"""Read-only views of a run's committed outputs, for the task heads in :mod:`docstream.tasks`.

Everything here reads through :class:`~docstream.store.run_store.RunStore`'s commit records, so only
committed rows are ever seen, and a run still writing the directory does no harm: a reader works on
the commits that existed when it listed them. Embedding rows come back as NumPy arrays, so callers
never depend on the storage format.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from docstream.corpus.chunk_id import ID_FIELDS, ChunkIdColumns
from docstream.model.pooling import DEFAULT_POOLING, POOLINGS
from docstream.store.run_store import RunStore, drop_retracted, retracted_before
from docstream.store.schemas import SCHEMAS

if TYPE_CHECKING:  # the settings model (pydantic, the corpus formats) is imported when a run's settings are read
    from docstream.store.config import RunConfig

#: the embeddings-table column that holds each pooling's vectors
EMBEDDING_COLUMNS = {"last": "embedding", "mean": "embedding_mean", "state": "embedding_state"}
#: the columns that identify a chunk
ID_COLUMNS = ID_FIELDS


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`~docstream.model.pooling.POOLINGS`, else ``ValueError``."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(map(repr, POOLINGS))}")
    return pooling


@dataclass(frozen=True)
class EmbeddingRows(ChunkIdColumns):
    """Committed chunk vectors of one pooling, one row per chunk, in commit order: the chunk ids
    (:class:`~docstream.corpus.chunk_id.ChunkIdColumns`) and ``vectors``, float32 ``[n, dimension]``."""

    vectors: np.ndarray

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def empty(cls, dimension: int = 0) -> EmbeddingRows:
        """No rows (``dimension`` wide)."""
        return cls(*cls.empty_columns(), np.empty((0, dimension), np.float32))

    @classmethod
    def concat(cls, parts: list[EmbeddingRows]) -> EmbeddingRows:
        """The rows of ``parts``, in order (an empty result when there are none)."""
        parts = [p for p in parts if len(p)]
        return cls.join(parts) if parts else cls.empty()


@dataclass(frozen=True)
class CommittedEmbeddings:
    """The live embedding rows of the commits with ``after_seq < seq <= last_seq``.

    ``retracted`` names the documents that those commits retracted: their rows committed at or before
    ``after_seq`` no longer count, so an index built from them must drop them (or be rebuilt).
    """

    rows: EmbeddingRows
    after_seq: int
    last_seq: int
    retracted: frozenset[str] = frozenset()


def read_run_config(out: str | Path) -> dict[str, Any]:
    """The run's ``config.json`` (``identity``, ``settings``, ``docstream_version``)."""
    config = RunStore(out).read_config()
    if config is None:
        raise FileNotFoundError(f"{str(out)!r} has no config.json, so it is not the output directory of a "
                                f"docstream run; pass the --out directory of `docstream run`")
    return config


def run_identity(out: str | Path) -> str:
    """A digest of the run's identity (settings that shape its vectors, model and tokenizer fingerprints): what
    an index records of the run it was built from."""
    identity = read_run_config(out)["identity"]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def run_settings(out: str | Path) -> RunConfig:
    """The settings the run was started with, as a :class:`RunConfig`."""
    from docstream.store.config import RunConfig

    return RunConfig(**read_run_config(out)["settings"])


def last_seq(out: str | Path) -> int:
    """The sequence number of the run's latest commit (0 when nothing is committed)."""
    return max((record["seq"] for record in RunStore(out).commit_records()), default=0)


def finished_documents(out: str | Path) -> set[str]:
    """Ids of the documents the run has finished (all their chunks are committed)."""
    return RunStore(out).progress().finished


def document_rows(out: str | Path) -> list[dict[str, Any]]:
    """One dict per finished document: doc_id, source, n_tokens, n_chunks and the repair counts."""
    return RunStore(out).read_table("documents").to_pylist()


def read_embeddings(out: str | Path, pooling: str = DEFAULT_POOLING, after_seq: int = 0,
                    upto_seq: int | None = None) -> CommittedEmbeddings:
    """The committed chunk vectors of ``pooling`` from commits with ``after_seq < seq <= upto_seq``.

    ``upto_seq`` defaults to the latest commit when the commit records are listed, which is
    returned as ``last_seq``: reading again with ``after_seq=last_seq`` gives exactly the rows
    committed since, each chunk once.
    """
    check_pooling(pooling)
    column = EMBEDDING_COLUMNS[pooling]
    parts, upto, retracted = _live_parts(out, [*ID_COLUMNS, column], after_seq, upto_seq)
    rows = EmbeddingRows.concat([_rows(table, column, path) for table, path in parts])
    return CommittedEmbeddings(rows, after_seq, upto, retracted)


@dataclass(frozen=True)
class ChunkTokens(ChunkIdColumns):
    """Committed chunks' token ids, one row per chunk in commit order: ``tokens[i]`` is row i's int32
    ids, or None for a chunk committed before runs stored them (its text must be read from the corpus)."""

    tokens: list[np.ndarray | None]


@dataclass(frozen=True)
class CommittedTokens:
    """The live chunk tokens of the commits with ``after_seq < seq <= last_seq`` (the same rows, in the
    same order, as :func:`read_embeddings` of that range; ``retracted`` as there)."""

    rows: ChunkTokens
    after_seq: int
    last_seq: int
    retracted: frozenset[str] = frozenset()


def read_chunk_tokens(out: str | Path, after_seq: int = 0, upto_seq: int | None = None) -> CommittedTokens:
    """The token ids of the chunks committed with ``after_seq < seq <= upto_seq`` (see :func:`read_embeddings`
    for the range and for reading exactly once)."""
    parts, upto, retracted = _live_parts(out, [*ID_COLUMNS, "tokens"], after_seq, upto_seq)
    ids = [ChunkIdColumns.columns_of(table) for table, _ in parts]
    columns = [np.concatenate(column) for column in zip(*ids)] if ids else ChunkIdColumns.empty_columns()
    tokens = [None if t is None else np.asarray(t, np.int32)
              for table, _ in parts for t in table.column("tokens").to_numpy(zero_copy_only=False)]
    return CommittedTokens(ChunkTokens(*columns, tokens), after_seq, upto, retracted)


def _live_parts(out: str | Path, columns: list[str], after_seq: int,
                upto_seq: int | None) -> tuple[list[tuple[pa.Table, Path]], int, frozenset[str]]:
    """``columns`` of the live rows of every embeddings part committed with ``after_seq < seq <= upto``
    (each checked against its checksum), ``upto`` (the newest commit when ``upto_seq`` is None), and the
    documents those commits retracted."""
    store = RunStore(out)
    records = list(store.commit_records())
    newest = max((r["seq"] for r in records), default=0)
    upto = newest if upto_seq is None else upto_seq
    if after_seq < 0 or upto < after_seq:
        raise ValueError(f"commit range must satisfy 0 <= after_seq <= upto_seq, got after_seq={after_seq}, "
                         f"upto_seq={upto}")
    records = [r for r in records if r["seq"] <= upto]
    dead = retracted_before(records)
    parts = []
    for seq, path, sha in store.committed_parts("embeddings", records):
        if seq > after_seq:
            table = store.read_part(path, sha, columns=columns, schema=SCHEMAS["embeddings"])
            parts.append((drop_retracted(table, seq, dead), path))
    retracted = frozenset(d for r in records if r["seq"] > after_seq for d in r.get("retracted", []))
    return parts, upto, retracted


def _rows(table: pa.Table, column: str, path: Path) -> EmbeddingRows:
    """The id columns and one vector column of (live rows of) an embeddings part."""
    return EmbeddingRows(*EmbeddingRows.columns_of(table), _matrix(table.column(column), path))


def _matrix(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """A list<float32> column as a float32 ``[rows, width]`` matrix (every list must have the same width)."""
    lists = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32()))
    rows = len(lists)
    if rows == 0:
        return np.empty((0, 0), np.float32)
    lengths = lists.value_lengths().to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise ValueError(f"{path} holds vectors of different lengths ({lengths.min()} to {lengths.max()}); "
                         f"the output directory is damaged")
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(rows, int(lengths[0]))
