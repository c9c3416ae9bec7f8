"""Embeddings from a run: per-chunk vectors, per-document vectors, and query text embedded the run's way.

A run stores three vectors per chunk (see :mod:`docstream.model.pooling`): ``last`` (final hidden
state at the chunk's last token), ``mean`` (final hidden states averaged over the chunk) and ``state``
(the last layer's recurrent state as a vector). Here:

* :func:`chunk_vectors` reads them back for one pooling;
* :func:`document_vectors` averages each finished document's chunk vectors and L2-normalizes the mean;
* :class:`QueryEmbedder` streams any text through the run's model, tokenizer, chunk length and dtype,
  exactly as the run streamed its documents, and returns the poolings of the text's final chunk: a
  query that is the exact text of a document gets that document's final-chunk vectors, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from docstream.corpus import Document, Rejected
from docstream.model import load_model
from docstream.model.formats.hf_files import checkpoint_fingerprint
from docstream.model.pooling import DEFAULT_POOLING, POOLINGS
from docstream.store.reader import (
    EmbeddingRows,
    check_pooling,
    finished_documents,
    read_embeddings,
    read_run_config,
    run_settings,
)
from docstream.stream.engine import ChunkRecord, Stream, StreamTask
from docstream.tasks.index_files import l2_normalize
from docstream.tokenizer import Tokenizer, load_tokenizer

__all__ = ["DocumentVectors", "POOLINGS", "QueryEmbedder", "chunk_vectors", "document_vectors", "embed_text",
           "l2_normalize", "mean_by_document"]

#: a query is one document; only its final chunk's state is ever needed, so never snapshot earlier
_NO_SNAPSHOTS = 1 << 62


def chunk_vectors(out: str | Path, pooling: str = DEFAULT_POOLING) -> EmbeddingRows:
    """Every committed chunk vector of ``pooling`` in the run at ``out``, with the chunks' ids."""
    return read_embeddings(out, pooling).rows


@dataclass(frozen=True)
class DocumentVectors:
    """One L2-normalized vector per document (the mean of its chunk vectors), documents sorted by id."""

    doc_ids: list[str]
    n_chunks: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.doc_ids)

    def vector(self, doc_id: str) -> np.ndarray:
        """The vector of ``doc_id``."""
        try:
            return self.vectors[self.doc_ids.index(doc_id)]
        except ValueError:
            raise KeyError(f"no document vector for {doc_id!r}; it is not a finished document of the run") from None


def mean_by_document(rows: EmbeddingRows) -> DocumentVectors:
    """Average the chunk vectors of each document, then L2-normalize the means."""
    if not len(rows):
        return DocumentVectors([], np.empty(0, np.int64), np.empty((0, rows.dimension), np.float32))
    doc_ids, inverse, counts = np.unique(rows.doc_id.astype(str), return_inverse=True, return_counts=True)
    sums = np.zeros((len(doc_ids), rows.dimension), np.float64)
    np.add.at(sums, inverse, rows.vectors.astype(np.float64))
    return DocumentVectors([str(d) for d in doc_ids], counts.astype(np.int64), l2_normalize(sums / counts[:, None]))


def document_vectors(out: str | Path, pooling: str = DEFAULT_POOLING, finished_only: bool = True) -> DocumentVectors:
    """Per-document vectors of the run at ``out``: the L2-normalized mean of each document's chunk vectors.

    With ``finished_only`` (the default) documents the run has not finished yet are left out, since
    the mean of some of their chunks would change as the rest arrive.
    """
    rows = chunk_vectors(out, pooling)
    if finished_only and len(rows):
        keep = np.isin(rows.doc_id.astype(str), np.array(sorted(finished_documents(out)), dtype=str))
        rows = EmbeddingRows(rows.doc_id[keep], rows.chunk_index[keep], rows.token_start[keep],
                             rows.token_end[keep], rows.vectors[keep])
    return mean_by_document(rows)


class QueryEmbedder:
    """Embeds text with the model, tokenizer, chunk length and dtype of the run at ``out``.

    The model and tokenizer files are the ones in the run's settings unless ``model`` / ``tokenizer``
    name others (for a run made on another machine); either way their fingerprints must match the
    run's, so vectors stay comparable. ``device`` and ``backend`` default to the run's.
    """

    def __init__(self, out: str | Path, *, model: str | Path | None = None, tokenizer: str | Path | None = None,
                 device: str | None = None, backend: str | None = None):
        settings = run_settings(out)
        identity = read_run_config(out)["identity"]
        model_path = Path(model) if model is not None else Path(settings.model)
        tokenizer_path = Path(tokenizer) if tokenizer is not None else Path(settings.tokenizer)
        _require_file("model checkpoint", model_path, out, "model")
        _require_file("tokenizer file", tokenizer_path, out, "tokenizer")
        _check_fingerprint("model checkpoint", model_path, checkpoint_fingerprint(model_path),
                           identity.get("model_fingerprint"), out, "model")
        self.tokenizer: Tokenizer = load_tokenizer(tokenizer_path)
        _check_fingerprint("tokenizer file", tokenizer_path, self.tokenizer.fingerprint(),
                           identity.get("tokenizer_fingerprint"), out, "tokenizer")
        self.model = load_model(model_path, **dict(settings.model_args(device), backend=backend or settings.backend))
        self.chunk_len = settings.chunk_len

    @property
    def dimension(self) -> int:
        return self.model.config.n_embd

    def embed_all(self, text: str) -> dict[str, np.ndarray]:
        """Every pooling of ``text``'s final chunk, as float32 vectors (not normalized)."""
        return {name: vectors[0] for name, vectors in self.embed_batch([text], batch_size=1).items()}

    def embed(self, text: str, pooling: str = DEFAULT_POOLING) -> np.ndarray:
        """The ``pooling`` vector of ``text``'s final chunk (float32, not normalized)."""
        check_pooling(pooling)
        return self.embed_all(text)[pooling]

    def embed_many(self, texts: Sequence[str], pooling: str = DEFAULT_POOLING, batch_size: int = 8,
                   progress: bool = False) -> np.ndarray:
        """``[len(texts), dimension]`` float32 vectors of ``pooling`` (see :meth:`embed_batch`)."""
        check_pooling(pooling)
        return self.embed_batch(texts, batch_size, progress)[pooling]

    def embed_batch(self, texts: Sequence[str], batch_size: int = 8, progress: bool = False) -> dict[str, np.ndarray]:
        """Every pooling of each text's final chunk: pooling -> float32 ``[len(texts), dimension]``.

        ``batch_size`` texts stream at once; the results do not depend on it.
        """
        stream = Stream(self.model, self.tokenizer, self.chunk_len, batch_size, _NO_SNAPSHOTS)
        tasks = [StreamTask(Document.from_text(str(i), text, f"text {i + 1}")) for i, text in enumerate(texts)]
        found: dict[int, dict[str, np.ndarray]] = {}
        with tqdm(total=len(tasks), unit="text", desc="embedding", disable=not progress) as bar:
            for event in stream.run(tasks):
                if isinstance(event, Rejected):
                    raise ValueError(f"cannot embed text {int(event.doc_id) + 1} of {len(tasks)} ({event.detail}); "
                                     f"give text with at least one token")
                if isinstance(event, ChunkRecord) and event.is_last:
                    found[int(event.doc_id)] = event.vectors
                    bar.update(1)
        return {name: np.stack([np.asarray(found[i][name], np.float32) for i in range(len(tasks))])
                if tasks else np.empty((0, self.dimension), np.float32) for name in POOLINGS}


def embed_text(out: str | Path, text: str, pooling: str = DEFAULT_POOLING, **options) -> np.ndarray:
    """``text`` embedded the way the run at ``out`` embeds a chunk (loads the model: for many texts keep
    a :class:`QueryEmbedder`). ``options`` go to :class:`QueryEmbedder`."""
    return QueryEmbedder(out, **options).embed(text, pooling)


def _require_file(what: str, path: Path, out: str | Path, option: str) -> None:
    """Fail when ``path`` is missing."""
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} used by the run at {str(out)!r} does not exist here; "
                                f"pass {option}= (--{option}) naming the same file")


def _check_fingerprint(what: str, path: Path, actual: str, expected: str | None, out: str | Path,
                       option: str) -> None:
    """Fail when a file's fingerprint is not the one the run recorded."""
    if expected is not None and actual != expected:
        raise ValueError(f"{what} {str(path)!r} is not the one the run at {str(out)!r} used (fingerprint "
                         f"{actual[:12]}…, the run's is {expected[:12]}…): its vectors would not be comparable; "
                         f"pass {option}= (--{option}) naming the run's file")
