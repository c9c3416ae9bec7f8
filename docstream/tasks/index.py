"""FAISS indexes over a run's chunk vectors, updated incrementally and exactly once.

Layout of ``OUT/index/<pooling>/``::

    meta.json                  the commit point: factory, metric, pooling, dimension, the run's last
                               commit ``seq`` included, vector count, and the two files below
    index-000003.faiss         the FAISS index (``faiss.write_index``) of generation 3
    ids-000003.parquet         its id table: row i = FAISS id i -> doc_id, chunk_index, token_start, token_end
    .lock                      flock: one updater at a time, readers share it

An update adds the embeddings of the commits with ``seq`` above the one in ``meta.json``, writes the
index and id table of the next generation under new names (temp file + fsync + rename), then
rewrites ``meta.json`` atomically, and only then deletes the previous generation. A reader trusts
only the files ``meta.json`` names, so a crash at any moment leaves the old consistent set or the
new one, and an update after a crash adds each commit's vectors exactly once.

The metric is cosine by default (vectors L2-normalized, inner product, score in [-1, 1]); ``"ip"``
uses raw inner products and ``"l2"`` squared L2 distances (smaller is closer). Any FAISS
``index_factory`` string works; indexes that need training (IVF, PQ, ...) are trained on the vectors
available at their first build, which must be at least 39 per centroid (FAISS's own advice).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

try:
    import faiss
except ImportError as _err:
    raise ImportError("docstream's indexes and search need FAISS: install it with pip install "
                      "'docstream[faiss]' (faiss-cpu), or faiss-gpu") from _err

from docstream.stream.reader import EmbeddingRows, check_pooling, read_embeddings, read_run_config
from docstream.stream.store import atomic_write_bytes
from docstream.tasks.embed import l2_normalize
from docstream.stream.pooling import DEFAULT_POOLING

__all__ = ["ChunkId", "DEFAULT_FACTORY", "IdTable", "IndexMeta", "LoadedIndex", "METRICS", "UpdateResult",
           "build_index", "index_dir", "load_index", "new_index", "prepare_vectors", "read_meta", "train_index",
           "training_minimum", "update_index"]

DEFAULT_FACTORY = "Flat"
METRICS = ("cosine", "ip", "l2")
#: FAISS warns below this many training points per k-means centroid
POINTS_PER_CENTROID = 39
META_NAME = "meta.json"
META_FORMAT = 1
#: vectors added to an index per call, so progress shows on large updates
ADD_BATCH = 65536
_FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class ChunkId:
    """Where a FAISS id points: a chunk of a document and its token range."""

    doc_id: str
    chunk_index: int
    token_start: int
    token_end: int


@dataclass(frozen=True)
class IdTable:
    """FAISS id -> chunk: row ``i`` describes the vector with id ``i``."""

    doc_id: np.ndarray
    chunk_index: np.ndarray
    token_start: np.ndarray
    token_end: np.ndarray

    def __len__(self) -> int:
        return len(self.doc_id)

    def row(self, i: int) -> ChunkId:
        """The chunk of FAISS id ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"FAISS id {i} is outside the id table's {len(self)} rows")
        return ChunkId(str(self.doc_id[i]), int(self.chunk_index[i]), int(self.token_start[i]),
                       int(self.token_end[i]))

    @classmethod
    def of_rows(cls, rows: EmbeddingRows) -> IdTable:
        return cls(rows.doc_id, rows.chunk_index, rows.token_start, rows.token_end)

    @classmethod
    def concat(cls, first: IdTable, second: IdTable) -> IdTable:
        return cls(*(np.concatenate([getattr(first, n), getattr(second, n)])
                     for n in ("doc_id", "chunk_index", "token_start", "token_end")))

    def write(self, path: Path) -> None:
        """Write the table as Parquet to ``path`` atomically."""
        table = pa.table({"doc_id": pa.array(self.doc_id.tolist(), pa.string()),
                          "chunk_index": pa.array(self.chunk_index, pa.int32()),
                          "token_start": pa.array(self.token_start, pa.int64()),
                          "token_end": pa.array(self.token_end, pa.int64())})
        _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    @classmethod
    def read(cls, path: Path) -> IdTable:
        table = pq.read_table(path)
        return cls(np.asarray(table.column("doc_id").to_pylist(), dtype=object),
                   table.column("chunk_index").to_numpy().astype(np.int32),
                   table.column("token_start").to_numpy().astype(np.int64),
                   table.column("token_end").to_numpy().astype(np.int64))


@dataclass(frozen=True)
class IndexMeta:
    """What ``meta.json`` records about the current index generation."""

    factory: str
    metric: str
    pooling: str
    dimension: int
    seq: int
    count: int
    generation: int
    index_file: str
    ids_file: str
    run_identity: str
    format: int = META_FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> IndexMeta:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError) as err:
            raise ValueError(f"index meta {path} is not a docstream index description ({err}); "
                             f"rebuild the index (rebuild=True, --rebuild)") from err


@dataclass
class LoadedIndex:
    """An index generation read from disk: the FAISS index, its id table and its meta."""

    meta: IndexMeta
    index: faiss.Index
    ids: IdTable

    def search(self, queries: np.ndarray, k: int, params: str | None = None) -> list[list[tuple[int, float]]]:
        """For each query vector, up to ``k`` ``(faiss_id, score)`` pairs, best first.

        Query vectors are prepared like the indexed ones (normalized for cosine). ``params`` are
        FAISS search parameters such as ``"nprobe=8"`` (IVF) or ``"efSearch=64"`` (HNSW).
        """
        return search_index(self.index, queries, k, self.meta.metric, params)


@dataclass(frozen=True)
class UpdateResult:
    """What :func:`update_index` did: ``added`` vectors (0 when the index was up to date)."""

    meta: IndexMeta
    added: int
    path: Path


# ---------------------------------------------------------------------------------------------
# Building indexes in memory


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else ``ValueError``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(map(repr, METRICS))}")
    return metric


def prepare_vectors(vectors: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """C-contiguous float32 ``[n, d]`` vectors as the metric indexes them (unit rows for cosine)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"vectors must be [n, dimension], got shape {x.shape}")
    if check_metric(metric) == "cosine":
        x = l2_normalize(x)
    return np.ascontiguousarray(x)


def new_index(factory: str, dimension: int, metric: str = "cosine") -> faiss.Index:
    """An empty FAISS index from an ``index_factory`` string."""
    if dimension < 1:
        raise ValueError(f"index dimension must be at least 1, got {dimension}")
    try:
        return faiss.index_factory(int(dimension), factory, _FAISS_METRICS[check_metric(metric)])
    except RuntimeError as err:
        raise ValueError(f"FAISS cannot build index factory {factory!r} for {dimension}-d vectors: "
                         f"{_faiss_message(err)}; see the FAISS wiki's 'The index factory' for valid strings "
                         f"(e.g. 'Flat', 'IVF64,Flat', 'HNSW32', 'IVF16,PQ8')") from err


def training_minimum(index: faiss.Index) -> int:
    """How many vectors training ``index`` needs: 39 per centroid of its largest k-means (IVF lists,
    PQ sub-quantizer codes), 1 for other untrained indexes, 0 when it needs no training."""
    if index.is_trained:
        return 0
    centroids = _centroid_counts(index)
    return POINTS_PER_CENTROID * max(centroids) if centroids else 1


def _centroid_counts(index: faiss.Index) -> list[int]:
    """The k-means sizes trained inside ``index`` (IVF coarse quantizer, product quantizers)."""
    counts: list[int] = []
    node = faiss.downcast_index(index)
    while node is not None:
        if isinstance(node, faiss.IndexPreTransform):
            node = faiss.downcast_index(node.index)
            continue
        if isinstance(node, faiss.IndexIVF):
            counts.append(int(node.nlist))
        pq_ = getattr(node, "pq", None)
        if pq_ is not None:
            counts.append(int(pq_.ksub))
        node = faiss.downcast_index(node.storage) if isinstance(node, faiss.IndexHNSW) else None
    return counts


def train_index(index: faiss.Index, vectors: np.ndarray, factory: str) -> None:
    """Train ``index`` on prepared ``vectors`` when it needs it, refusing too few of them."""
    needed = training_minimum(index)
    if needed == 0:
        return
    if len(vectors) < needed:
        raise ValueError(f"index factory {factory!r} needs training on at least {needed} vectors "
                         f"({POINTS_PER_CENTROID} per centroid), but only {len(vectors)} are available; "
                         f"use 'Flat' or 'HNSW32', fewer IVF lists or PQ bits (e.g. 'IVF16,PQ8x4'), "
                         f"or index after more of the corpus is processed")
    try:
        index.train(vectors)
    except RuntimeError as err:
        raise ValueError(f"training index factory {factory!r} on {len(vectors)} vectors failed: "
                         f"{_faiss_message(err)}") from err


def build_index(vectors: np.ndarray, factory: str = DEFAULT_FACTORY, metric: str = "cosine") -> faiss.Index:
    """An in-memory index of ``vectors`` (FAISS id = row), trained on them when the factory needs it."""
    x = prepare_vectors(vectors, metric)
    index = new_index(factory, x.shape[1], metric)
    train_index(index, x, factory)
    _add(index, x, progress=False)
    return index


def search_index(index: faiss.Index, queries: np.ndarray, k: int, metric: str = "cosine",
                 params: str | None = None) -> list[list[tuple[int, float]]]:
    """For each query, up to ``k`` ``(faiss_id, score)`` pairs, best first (see :meth:`LoadedIndex.search`)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = prepare_vectors(queries, metric)
    if x.shape[1] != index.d:
        raise ValueError(f"query vectors have dimension {x.shape[1]}, the index holds {index.d}-d vectors")
    if params:
        _set_params(index, params)
    if index.ntotal == 0:
        return [[] for _ in range(len(x))]
    scores, ids = index.search(x, min(k, index.ntotal))
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids, scores)]


def _set_params(index: faiss.Index, params: str) -> None:
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as err:
        raise ValueError(f"FAISS search parameters {params!r} do not apply to this index: {_faiss_message(err)}; "
                         f"use e.g. 'nprobe=8' for IVF or 'efSearch=64' for HNSW") from err


def _add(index: faiss.Index, vectors: np.ndarray, progress: bool) -> None:
    """Add prepared vectors in batches (with a progress bar when there are many)."""
    starts = range(0, len(vectors), ADD_BATCH)
    for start in tqdm(starts, desc="indexing", unit="batch", disable=not progress or len(starts) < 2):
        index.add(vectors[start:start + ADD_BATCH])


def _faiss_message(err: RuntimeError) -> str:
    """The useful last line of a FAISS C++ exception."""
    text = str(err).strip()
    return text.rsplit(": ", 1)[-1] if " at " in text else text


# ---------------------------------------------------------------------------------------------
# Index generations on disk


def index_dir(out: str | Path, pooling: str = DEFAULT_POOLING) -> Path:
    """``OUT/index/<pooling>``."""
    return Path(out) / "index" / check_pooling(pooling)


def read_meta(out: str | Path, pooling: str = DEFAULT_POOLING) -> IndexMeta | None:
    """The current index description of ``pooling``, or None when there is no index yet."""
    path = index_dir(out, pooling) / META_NAME
    if not path.exists():
        return None
    return IndexMeta.from_json(path.read_bytes(), path)


def load_index(out: str | Path, pooling: str = DEFAULT_POOLING) -> LoadedIndex:
    """The current index of ``pooling`` in the run at ``out`` (only the files ``meta.json`` names)."""
    directory = index_dir(out, pooling)
    if not (directory / META_NAME).exists():
        raise FileNotFoundError(f"there is no {pooling!r} index in {str(out)!r}; build it with "
                                f"`docstream index --run {out} --pooling {pooling}` or update_index()")
    with _locked(directory, exclusive=False):
        meta = read_meta(out, pooling)
        index = faiss.read_index(str(directory / meta.index_file))
        ids = IdTable.read(directory / meta.ids_file)
    if not index.ntotal == len(ids) == meta.count:
        raise ValueError(f"the index in {directory} is inconsistent ({index.ntotal} vectors, {len(ids)} ids, "
                         f"meta says {meta.count}); rebuild it (rebuild=True, --rebuild)")
    return LoadedIndex(meta, index, ids)


def update_index(out: str | Path, pooling: str = DEFAULT_POOLING, factory: str = DEFAULT_FACTORY, metric: str = "cosine",
                 rebuild: bool = False, progress: bool = False) -> UpdateResult:
    """Bring the ``pooling`` index of the run at ``out`` up to the run's latest commit.

    Adds only the embeddings of commits newer than the index's ``seq`` (nothing when it is up to
    date), so each chunk is indexed exactly once however often this is called. ``rebuild=True``
    discards the existing index and builds ``factory`` from every committed vector.

    Raises:
        ValueError: the existing index has another factory or metric (pass ``rebuild=True``), was
            built from another run, or a new trainable index has too few vectors to train on.
        FileNotFoundError: ``out`` is not a run's output directory.
    """
    check_pooling(pooling)
    check_metric(metric)
    identity = _run_identity(out)
    directory = index_dir(out, pooling)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory, exclusive=True):
        old = None if rebuild else read_meta(out, pooling)
        if old is not None:
            _check_compatible(old, factory, metric, identity, directory)
        new = read_embeddings(out, pooling, after_seq=old.seq if old else 0)
        if old is not None and new.last_seq < old.seq:
            raise ValueError(f"the index in {directory} includes commit {old.seq} but the run has only "
                             f"{new.last_seq} commits; the run directory was rewritten: rebuild the index "
                             f"(rebuild=True, --rebuild)")
        if old is not None and new.last_seq == old.seq:
            return UpdateResult(old, 0, directory)
        meta = _write_generation(directory, old, new.rows, new.last_seq, factory, metric, pooling, identity,
                                 progress)
        return UpdateResult(meta, len(new.rows), directory)


def _write_generation(directory: Path, old: IndexMeta | None, rows: EmbeddingRows, seq: int, factory: str,
                      metric: str, pooling: str, identity: str, progress: bool) -> IndexMeta:
    """Add ``rows`` to the old generation (or a new index) and commit the result as the next generation."""
    if old is None and not len(rows):
        raise ValueError(f"the run at {str(directory.parents[1])!r} has no committed embeddings yet, so there "
                         f"is nothing to index; let `docstream run` commit some first")
    x = prepare_vectors(rows.vectors, metric) if len(rows) else None
    if old is None:
        index, ids = new_index(factory, x.shape[1], metric), IdTable.of_rows(rows)
        train_index(index, x, factory)
    else:
        index = faiss.read_index(str(directory / old.index_file))
        ids = IdTable.concat(IdTable.read(directory / old.ids_file), IdTable.of_rows(rows))
        if x is not None and x.shape[1] != old.dimension:
            raise ValueError(f"new vectors have dimension {x.shape[1]} but the index in {directory} holds "
                             f"{old.dimension}-d vectors; rebuild it (rebuild=True, --rebuild)")
    if x is not None:
        _add(index, x, progress)
    generation = (old.generation if old else _last_generation(directory)) + 1
    meta = IndexMeta(factory, metric, pooling, int(index.d), seq, int(index.ntotal), generation,
                     f"index-{generation:06d}.faiss", f"ids-{generation:06d}.parquet", identity)
    _atomic_write(directory / meta.index_file, lambda tmp: faiss.write_index(index, str(tmp)))
    ids.write(directory / meta.ids_file)
    atomic_write_bytes(directory / META_NAME, meta.to_json())
    _remove_unnamed(directory, meta)
    return meta


def _check_compatible(meta: IndexMeta, factory: str, metric: str, identity: str, directory: Path) -> None:
    """Fail when the saved index cannot simply be extended with this update's settings."""
    if (meta.factory, meta.metric) != (factory, metric):
        raise ValueError(f"the {meta.pooling!r} index in {directory} is {meta.factory!r} with metric "
                         f"{meta.metric!r}, not {factory!r} with metric {metric!r}; use its settings, or replace "
                         f"it with rebuild=True (--rebuild)")
    if meta.run_identity != identity:
        raise ValueError(f"the index in {directory} was built from a run with other settings or another model; "
                         f"rebuild it (rebuild=True, --rebuild)")


def _run_identity(out: str | Path) -> str:
    """A digest of the run's identity (settings that shape its vectors, model and tokenizer fingerprints)."""
    identity = read_run_config(out)["identity"]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _last_generation(directory: Path) -> int:
    """The highest generation number among the files in ``directory`` (0 when none), so a rebuild never
    reuses the name of a file a reader may still be opening."""
    numbers = [int(p.stem.rsplit("-", 1)[1]) for p in directory.glob("index-*.faiss")
               if p.stem.rsplit("-", 1)[1].isdigit()]
    return max(numbers, default=0)


def _remove_unnamed(directory: Path, meta: IndexMeta) -> None:
    """Delete older generations and temp files left by crashed updates."""
    keep = {META_NAME, ".lock", meta.index_file, meta.ids_file}
    for path in directory.iterdir():
        if path.name not in keep and path.is_file():
            path.unlink()


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` then fsync and rename ``tmp`` to ``path``, so ``path`` is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(directory: Path, exclusive: bool) -> Iterator[None]:
    """Hold ``directory/.lock``: exclusively while updating, shared while reading."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
