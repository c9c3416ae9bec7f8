"""FAISS indexes over a run's chunk vectors, updated incrementally and exactly once.

Layout of ``OUT/index/<pooling>/``::

    meta.json                  the commit point: factory, metric, pooling, dimension, the run's last
                               commit ``seq`` included, vector count, and the two files below with
                               their sha256 (checked before every load and every update)
    index-000003.faiss         the FAISS index (``faiss.write_index``) of generation 3
    ids-000003.parquet         its id table: row i = FAISS id i -> doc_id, chunk_index, token_start, token_end
    .lock                      flock: one updater at a time, readers share it

An update adds the embeddings of the commits with ``seq`` above the one in ``meta.json``, writes the
index and id table of the next generation under new names (temp file + fsync + rename), then
rewrites ``meta.json`` atomically, and only then deletes the previous generation. A reader trusts
only the files ``meta.json`` names, so a crash at any moment leaves the old consistent set or the
new one, and an update after a crash adds each commit's vectors exactly once. A file that differs
from its checksum (flipped bytes, truncation, reordered id rows) raises :class:`IndexDamagedError`
instead of returning wrong documents; an index is derived data, so rebuilding it is always the fix.
An index whose meta predates checksums is rebuilt by its next update.

The metric is cosine by default (vectors L2-normalized, inner product, score in [-1, 1]); ``"ip"``
uses raw inner products and ``"l2"`` squared L2 distances (smaller is closer). Any FAISS
``index_factory`` string works; indexes that need training (IVF, PQ, ...) are trained on the vectors
available at their first build, which must be at least 39 per centroid (FAISS's own advice).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

try:
    import faiss
except ImportError as _err:
    raise ImportError("docstream's indexes and search need FAISS: install it with pip install "
                      "'docstream[faiss]' (faiss-cpu), or faiss-gpu") from _err

from docstream.files import atomic_write_bytes, atomic_write_hashed, locked
from docstream.model.pooling import DEFAULT_POOLING
from docstream.store.reader import (
    CommittedEmbeddings,
    EmbeddingRows,
    check_pooling,
    read_embeddings,
    run_identity,
)
from docstream.tasks.embedder import EmbedderFiles
from docstream.tasks.index_files import (
    ChunkId,
    DiskFullError,
    IdTable,
    IndexDamagedError,
    file_problems,
    l2_normalize,
    last_generation,
    rebuild_hint,
    remove_unnamed,
)

__all__ = ["ChunkId", "DEFAULT_FACTORY", "DiskFullError", "EMBEDDER", "IdTable", "IndexDamagedError", "IndexMeta",
           "LoadedIndex", "METRICS", "UpdateResult", "build_index", "check_dense", "index_dir", "load_index",
           "new_index", "prepare_vectors", "read_meta", "run_identity", "train_index", "training_minimum",
           "update_index"]

DEFAULT_FACTORY = "Flat"
#: the dense vectors named "embedder": each chunk's text embedded on its own by an embedder
#: (:mod:`docstream.tasks.embedder`), next to the run's own poolings
EMBEDDER = "embedder"
METRICS = ("cosine", "ip", "l2")
#: FAISS warns below this many training points per k-means centroid
POINTS_PER_CENTROID = 39
META_NAME = "meta.json"
#: 2: meta.json records the sha256 of the index and id-table files (1 had none)
META_FORMAT = 2
#: vectors added to an index per call, so progress shows on large updates
ADD_BATCH = 65536
#: chunk texts an embedder embeds per call of an update (the progress bar moves this often)
EMBED_BATCH = 1024
_FAISS_METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


# ---------------------------------------------------------------------------------------------
# Values


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
    #: None in metas written before checksums (format 1): such an index cannot be verified
    index_sha256: str | None = None
    ids_sha256: str | None = None
    format: int = META_FORMAT
    #: the fingerprint of the embedder whose vectors an "embedder" index holds (None for the run's poolings),
    #: and the embedder as it was named ("builtin" or its checkpoint's path), which a repair rebuilds with
    embedder: str | None = None
    embedder_name: str | None = None

    @property
    def verifiable(self) -> bool:
        return self.index_sha256 is not None and self.ids_sha256 is not None

    def files(self) -> dict[str, str | None]:
        """The files of this generation -> their recorded sha256."""
        return {self.index_file: self.index_sha256, self.ids_file: self.ids_sha256}

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> IndexMeta:
        try:
            meta = cls(**json.loads(data))
        except (ValueError, TypeError) as err:
            raise IndexDamagedError(path, f"is not a docstream index description ({err})",
                                    rebuild_hint(path.parent)) from err
        if meta.format > META_FORMAT:
            raise ValueError(f"index meta {path} has format {meta.format}, newer than this docstream's "
                             f"{META_FORMAT}; upgrade docstream, or rebuild the index with this version")
        return meta


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


def check_dense(pooling: str) -> str:
    """``pooling`` if it names dense vectors an index can hold (a run pooling or :data:`EMBEDDER`)."""
    return pooling if pooling == EMBEDDER else check_pooling(pooling)


def index_dir(out: str | Path, pooling: str = DEFAULT_POOLING) -> Path:
    """``OUT/index/<pooling>``."""
    return Path(out) / "index" / check_dense(pooling)


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
    with locked(directory, exclusive=False):
        meta = read_meta(out, pooling)
        index, ids = read_generation(directory, meta)
    return LoadedIndex(meta, index, ids)


def read_generation(directory: Path, meta: IndexMeta, verify: bool = True) -> tuple[faiss.Index, IdTable]:
    """The FAISS index and id table ``meta`` names, checked against its checksums (unless ``verify`` is
    False because the caller just did) and its count.

    Raises:
        IndexDamagedError: a file is missing, differs from its checksum, is unreadable, or the counts disagree.
    """
    if verify:
        check_generation(directory, meta)
    hint = rebuild_hint(directory, meta.factory, meta.metric)
    index_path, ids_path = directory / meta.index_file, directory / meta.ids_file
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as err:  # a truncated or garbled file (only without checksums, or after a race)
        raise IndexDamagedError(index_path, f"is not a readable FAISS index ({_faiss_message(err)})", hint) from err
    try:
        ids = IdTable.read(ids_path)
    except (OSError, ValueError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise IndexDamagedError(ids_path, f"is not a readable id table ({err})", hint) from err
    if not index.ntotal == len(ids) == meta.count:
        raise IndexDamagedError(directory, f"is inconsistent ({index.ntotal} vectors in {meta.index_file}, "
                                           f"{len(ids)} rows in {meta.ids_file}, meta.json says {meta.count})", hint)
    return index, ids


def check_generation(directory: Path, meta: IndexMeta) -> None:
    """Raise :class:`IndexDamagedError` naming the first file of ``meta`` that is missing or differs
    from its recorded sha256 (a meta without checksums can only be checked for missing files)."""
    for path, problem in file_problems(directory, meta.files()):
        raise IndexDamagedError(path, problem, rebuild_hint(directory, meta.factory, meta.metric))


def update_index(out: str | Path, pooling: str = DEFAULT_POOLING, factory: str = DEFAULT_FACTORY,
                 metric: str = "cosine", rebuild: bool = False, progress: bool = False,
                 embedder: str | Path | None = None, device: str = "cpu") -> UpdateResult:
    """Bring the ``pooling`` index of the run at ``out`` up to the run's latest commit.

    Adds only the embeddings of commits newer than the index's ``seq`` (nothing when it is up to
    date), so each chunk is indexed exactly once however often this is called. ``rebuild=True``
    discards the existing index and builds ``factory`` from every committed vector.

    ``pooling="embedder"`` indexes each chunk's text embedded by ``embedder`` (None: the built-in one; see
    :mod:`docstream.tasks.embedder`) on ``device``, instead of the vectors the run computed.

    Raises:
        ValueError: the existing index has another factory or metric (pass ``rebuild=True``), was
            built from another run, or a new trainable index has too few vectors to train on.
        IndexDamagedError: a file of the existing index differs from its checksum or is missing
            (checked also when nothing is new), or the index is ahead of the run.
        DiskFullError: the disk filled up; the previous index is intact and no temp file is left.
        FileNotFoundError: ``out`` is not a run's output directory.
    """
    check_dense(pooling)
    check_metric(metric)
    vectors = _VectorSource(out, pooling, embedder, device, progress)
    identity = vectors.identity
    directory = index_dir(out, pooling)
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory, exclusive=True):
        old = None if rebuild else read_meta(out, pooling)
        if old is not None and _builtin_replaced(old, vectors.files):
            old = None  # a docstream upgrade brought a new built-in embedder: its vectors replace the old ones
        if old is not None:
            _check_compatible(old, factory, metric, identity, directory, vectors.embedder)
        if old is not None and not old.verifiable:
            old = None  # written before checksums: its files cannot be trusted, so build it afresh
        if old is not None:
            check_generation(directory, old)
        new = vectors.read(after_seq=old.seq if old else 0)
        if old is not None and new.last_seq < old.seq:
            raise IndexDamagedError(directory / META_NAME, f"includes commit {old.seq} but the run's newest commit "
                                                           f"is {new.last_seq} (the run folder was rewritten)",
                                    rebuild_hint(directory, old.factory, old.metric))
        if old is not None and new.retracted:
            # rows already in the index belong to documents a later commit retracted: start over
            old, new = None, vectors.read(after_seq=0)
        if old is not None and new.last_seq == old.seq:
            return UpdateResult(old, 0, directory)
        meta = _write_generation(directory, old, new.rows, new.last_seq, factory, metric, pooling, identity,
                                 progress, vectors.files)
        return UpdateResult(meta, len(new.rows), directory)


def _write_generation(directory: Path, old: IndexMeta | None, rows: EmbeddingRows, seq: int, factory: str,
                      metric: str, pooling: str, identity: str, progress: bool,
                      embedder: EmbedderFiles | None = None) -> IndexMeta:
    """Add ``rows`` to the old generation (or a new index) and commit the result as the next generation."""
    if old is None and not len(rows):
        raise ValueError(f"the run at {str(directory.parents[1])!r} has no committed embeddings yet, so there "
                         f"is nothing to index; let `docstream run` commit some first")
    x = prepare_vectors(rows.vectors, metric) if len(rows) else None
    if old is None:
        index, ids = new_index(factory, x.shape[1], metric), IdTable.of_rows(rows)
        train_index(index, x, factory)
    else:
        index, old_ids = read_generation(directory, old, verify=False)  # update_index just verified it
        ids = IdTable.concat(old_ids, IdTable.of_rows(rows))
        if x is not None and x.shape[1] != old.dimension:
            raise ValueError(f"new vectors have dimension {x.shape[1]} but the index in {directory} holds "
                             f"{old.dimension}-d vectors; rebuild it (rebuild=True, --rebuild)")
    if x is not None:
        _add(index, x, progress)
    generation = max(old.generation if old else 0, last_generation(directory)) + 1
    index_file, ids_file = f"index-{generation:06d}.faiss", f"ids-{generation:06d}.parquet"
    try:
        index_sha256 = atomic_write_hashed(directory / index_file, lambda tmp: _write_faiss(index, tmp))
        ids_sha256 = ids.write(directory / ids_file)
        meta = IndexMeta(factory, metric, pooling, int(index.d), seq, int(index.ntotal), generation, index_file,
                         ids_file, identity, index_sha256, ids_sha256,
                         embedder=embedder.fingerprint if embedder else None,
                         embedder_name=embedder.name if embedder else None)
        _write_meta(directory, meta)
    except BaseException:
        if not _meta_names(directory, index_file):  # remove what this generation wrote: a full disk gets its space back
            for name in (index_file, ids_file):
                (directory / name).unlink(missing_ok=True)
        raise
    remove_unnamed(directory, {META_NAME, ".lock", index_file, ids_file})
    return meta


def _meta_names(directory: Path, index_file: str) -> bool:
    """Whether ``directory``'s meta.json names ``index_file`` (False when it is absent or unreadable)."""
    try:
        return IndexMeta.from_json((directory / META_NAME).read_bytes(), directory / META_NAME).index_file == index_file
    except (OSError, ValueError):
        return False


def _write_faiss(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` through a Python file, so a failed write raises OSError with its errno
    (ENOSPC on a full disk) rather than a FAISS RuntimeError."""
    with open(path, "wb") as f:
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))


def _write_meta(directory: Path, meta: IndexMeta) -> None:
    """Commit ``meta`` as the current generation (atomically: the old meta.json or the whole new one)."""
    atomic_write_bytes(directory / META_NAME, meta.to_json())


def _builtin_replaced(meta: IndexMeta, files: EmbedderFiles | None) -> bool:
    """Whether ``meta`` describes the built-in embedder's vectors and the built-in embedder is now another one."""
    from docstream.tasks.embedder import BUILTIN

    return (files is not None and files.name == BUILTIN and meta.embedder_name == BUILTIN
            and meta.embedder != files.fingerprint)


def _check_compatible(meta: IndexMeta, factory: str, metric: str, identity: str, directory: Path,
                      embedder: str | None = None) -> None:
    """Fail when the saved index cannot simply be extended with this update's settings."""
    if meta.embedder != embedder:
        raise ValueError(f"the index in {directory} holds the vectors of another embedder; search with the "
                         f"embedder it was built with, or rebuild it with this one (rebuild=True, --rebuild)")
    if (meta.factory, meta.metric) != (factory, metric):
        raise ValueError(f"the {meta.pooling!r} index in {directory} is {meta.factory!r} with metric "
                         f"{meta.metric!r}, not {factory!r} with metric {metric!r}; use its settings, or replace "
                         f"it with rebuild=True (--rebuild)")
    if meta.run_identity != identity:
        raise ValueError(f"the index in {directory} was built from a run with other settings or another model; "
                         f"rebuild it (rebuild=True, --rebuild)")


class _VectorSource:
    """Where an index update's vectors come from: the run's own ``pooling`` vectors, or each chunk's text
    embedded by an embedder (``pooling`` = :data:`EMBEDDER`)."""

    def __init__(self, out: str | Path, pooling: str, embedder: str | Path | None, device: str, progress: bool):
        self.out, self.pooling, self.device, self.progress = out, pooling, device, progress
        self.files = None
        if pooling == EMBEDDER:
            from docstream.tasks.embedder import resolve_embedder

            self.files = resolve_embedder(embedder)
        self.embedder = self.files.fingerprint if self.files else None
        identity = run_identity(out)
        self.identity = identity if self.files is None else embedder_identity(identity, self.embedder)

    def read(self, after_seq: int) -> CommittedEmbeddings:
        """The live rows of the commits after ``after_seq``, with their vectors."""
        if self.files is None:
            return read_embeddings(self.out, self.pooling, after_seq=after_seq)
        from docstream.tasks.chunk_text import read_chunk_texts
        from docstream.tasks.embedder import PassageEmbedder

        chunks = read_chunk_texts(self.out, after_seq=after_seq)
        vectors = np.empty((0, self.files.spec.dimension), np.float32)
        if len(chunks):
            embedder, pieces = PassageEmbedder(self.files, self.device), []
            with tqdm(total=len(chunks), unit="chunk", desc="embedding chunks", disable=not self.progress) as bar:
                for start in range(0, len(chunks), EMBED_BATCH):
                    pieces.append(embedder.embed(chunks.texts[start:start + EMBED_BATCH]))
                    bar.update(len(pieces[-1]))
            vectors = np.concatenate(pieces)
        rows = EmbeddingRows(*chunks.rows.ids(), vectors)
        return CommittedEmbeddings(rows, after_seq, chunks.last_seq, chunks.retracted)


def embedder_identity(identity: str, embedder: str) -> str:
    """The identity an embedder index records: the run's identity digest joined with the embedder's fingerprint."""
    return hashlib.sha256(f"{identity}:{embedder}".encode()).hexdigest()
