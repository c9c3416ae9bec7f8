"""Search over a run's chunks: lexical (BM25), dense (vectors) and hybrid (both, fused by reciprocal rank).

Three retrievers rank a run's chunks:

* **lexical**: BM25 over the chunks' texts, each chunk's score helped by its whole document's (the tantivy
  indexes of :mod:`docstream.tasks.lexical`);
* **dense**: cosine similarity of vectors in a FAISS index (:mod:`docstream.tasks.index`). By default
  the vectors come from the built-in *embedder* (``pooling="embedder"``): each chunk's text embedded on its
  own by a model tuned for search (:mod:`docstream.tasks.embedder`). ``pooling="last" | "mean" | "state"``
  searches the vectors the run's own model computed while streaming instead;
* **hybrid** (the default): both, fused with reciprocal rank fusion (:mod:`docstream.tasks.fusion`, k = 60),
  the dense votes weighted :data:`DENSE_WEIGHT` and dropped where BM25's best document stands out
  (:data:`LEXICAL_CLEAR_GAP`).

Every hit says which retrievers found it and at which rank. Python use::

    from docstream.tasks import Searcher, search

    hits = search("out/", "how are states resumed?", k=5)            # one-off
    searcher = Searcher("out/")                                       # many queries: load once
    for hit in searcher.search("query text"):
        print(hit.rank, hit.score, hit.doc_id, hit.chunk_index, hit.retrievers, hit.snippet)
    for hits in searcher.search_many(["first query", "second query"], k=10):
        ...
    vectors = searcher.encode(["any text"])                          # the dense query vectors themselves

With the built-in embedder a query imports neither torch nor pyarrow once the indexes are up to date, so
a command-line search answers in well under a second.

Command line: ``docstream search`` and ``docstream index`` (:mod:`docstream.commands.search`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from docstream.tasks.snippets import SNIPPET_CHARS, shorten

if TYPE_CHECKING:
    from docstream.tasks.index import ChunkId, LoadedIndex
    from docstream.tasks.lexical import LexicalIndex
    from docstream.tokenizer import Tokenizer

__all__ = ["DEFAULT_MODE", "DEFAULT_POOLING", "Hit", "MODES", "SNIPPET_CHARS", "Searcher", "format_hits",
           "search", "shorten"]

#: how a query is answered: both retrievers fused, or one of them alone
MODES = ("hybrid", "dense", "lexical")
DEFAULT_MODE = "hybrid"
# Importing this module stays cheap (no torch, no FAISS: `docstream.tasks` exports it lazily), so the heavy
# modules are imported where they are used and the defaults are spelled out here; a test checks they equal
# docstream.tasks.index.EMBEDDER and docstream.tasks.index.DEFAULT_FACTORY.
DEFAULT_POOLING = "embedder"
DEFAULT_FACTORY = "Flat"
#: candidates each retriever hands to fusion (at least k)
DEPTH = 100
#: the dense ranking's weight in hybrid fusion (the lexical one's is 1), and the relative lead of BM25's best
#: document over the next (:func:`docstream.tasks.fusion.leading_gap`) at which the dense votes are dropped:
#: BM25 has found it plainly, and the embedder's other picks could only push it down. Chosen with the built-in
#: embedder together with the lexical index's DOCUMENT_WEIGHT, over the five collections of
#: bench/retrieval_eval.py (the rule: recall@10 at least BM25's (bm25s) on every one, then the best worst-case
#: nDCG@10 margin over it; bench/fusion_sweep.py, bench/RESULTS.md "Fusion")
DENSE_WEIGHT = 0.2
LEXICAL_CLEAR_GAP = 0.1

#: snippets are cut to this many characters


@dataclass(frozen=True)
class Hit:
    """One ranked search result. ``score``: the fused reciprocal-rank score (mode "hybrid"), the BM25 score
    ("lexical"), or for "dense" the cosine similarity (metric "cosine"), inner product ("ip") or squared L2
    distance ("l2"). ``retrievers``: the rank (from 1) each retriever that found the chunk gave it, e.g.
    ``{"lexical": 1, "dense": 4}``. ``snippet`` is None when the chunk's text could not be found."""

    rank: int
    score: float
    doc_id: str
    chunk_index: int
    token_start: int
    token_end: int
    snippet: str | None
    retrievers: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"rank": self.rank, "score": self.score, "doc_id": self.doc_id, "chunk_index": self.chunk_index,
                "token_start": self.token_start, "token_end": self.token_end, "snippet": self.snippet,
                "retrievers": dict(self.retrievers)}


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(map(repr, MODES))}")
    return mode


class Searcher:
    """Searches the run at ``out``; loads its indexes and the query encoder once.

    ``mode``: "hybrid" (default), "dense" or "lexical". ``pooling`` names the dense vectors: "embedder"
    (default: chunk texts embedded by ``embedder``, None meaning the built-in one) or the run's own
    "last" / "mean" / "state". ``factory`` None means the existing dense index's factory, or
    :data:`DEFAULT_FACTORY` when there is none. With ``update`` (the default) the indexes are first brought
    up to the run's latest commit (built if missing); without it they are used as they are. ``params`` are
    FAISS search parameters ("nprobe=8", "efSearch=64"); ``depth`` is how many candidates each retriever
    gives fusion, and ``dense_weight`` the dense ranking's weight there (the lexical one's is 1).
    ``embedder_options`` go to :class:`~docstream.tasks.embed.QueryEmbedder` (the run's own
    model, for its poolings), e.g. ``device``, ``model``, ``tokenizer``.
    """

    def __init__(self, out: str | Path, pooling: str = DEFAULT_POOLING, factory: str | None = None,
                 metric: str | None = None, *, mode: str = DEFAULT_MODE, update: bool = True,
                 params: str | None = None, embedder: str | Path | None = None, depth: int = DEPTH,
                 dense_weight: float = DENSE_WEIGHT, **embedder_options):
        self.out, self.mode, self.pooling, self.params = Path(out), check_mode(mode), pooling, params
        self.depth, self.weights = depth, {"dense": dense_weight}
        self.index: LoadedIndex | None = None
        self.lexical: LexicalIndex | None = None
        self._encode: Callable[[Sequence[str]], np.ndarray] | None = None
        if mode != "lexical":
            self.index, self._encode = _dense(self.out, pooling, factory, metric, update, embedder, embedder_options)
        if mode != "dense":
            self.lexical = _open_lexical(self.out, update)
        else:  # for the hits' texts only, when it can be had: else they are read from the corpus
            try:
                self.lexical = _open_lexical(self.out, update)
            except (OSError, ValueError):
                self.lexical = None
        self._tokenizer: Tokenizer | None = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The dense query vectors of ``texts``: ``[len(texts), dimension]`` float32, not normalized."""
        if self._encode is None:
            raise ValueError("a lexical-only searcher has no vectors; make it with mode='hybrid' or 'dense'")
        if isinstance(texts, str):
            raise ValueError("encode takes a list of texts; wrap a single text as [text]")
        return self._encode(list(texts))

    def search(self, query: str, k: int = 10, snippets: bool = True) -> list[Hit]:
        """The ``k`` chunks that best answer ``query``, best first (none for a blank query)."""
        return self.search_many([query], k, snippets)[0]

    def search_many(self, queries: Sequence[str], k: int = 10, snippets: bool = True) -> list[list[Hit]]:
        """:meth:`search` of each query, in order (query vectors and index searches batched)."""
        from docstream.tasks.fusion import leading_gap, reciprocal_rank_fusion

        if isinstance(queries, str):
            raise ValueError("search_many takes a list of queries; use search() for one")
        if not all(isinstance(query, str) for query in queries):
            raise ValueError("search_many takes a list of query strings")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        depth = max(k, self.depth) if self.mode == "hybrid" else k
        dense = self._dense_rankings(queries, depth) if self.mode != "lexical" else [None] * len(queries)
        lexical = self.lexical.search_many(queries, depth) if self.mode != "dense" else [None] * len(queries)
        results, texts = [], {}
        for found_dense, found_lexical in zip(dense, lexical):
            rankings, scores = {}, {}
            if found_lexical is not None:
                rankings["lexical"] = [_chunk_of(h) for h in found_lexical]
                scores["lexical"] = {c: h.score for c, h in zip(rankings["lexical"], found_lexical)}
                texts.update({c: h.text for c, h in zip(rankings["lexical"], found_lexical)})
            if found_dense is not None:
                rankings["dense"] = [chunk for chunk, _ in found_dense]
                scores["dense"] = dict(found_dense)
            weights = self.weights
            if found_lexical and found_dense and \
                    leading_gap([(h.doc_id, h.score) for h in found_lexical]) >= LEXICAL_CLEAR_GAP:
                weights = {"dense": 0.0}  # the dense hits still follow, after every lexical one
            fused = reciprocal_rank_fusion(rankings, limit=k, weights=weights)
            single = None if self.mode == "hybrid" else next(iter(scores))
            results.append([(f.key, f.score if single is None else scores[single][f.key], f.ranks) for f in fused])
        if snippets:
            texts.update(self._texts({chunk for hits in results for chunk, _, _ in hits if chunk not in texts}))
        return [[Hit(rank, score, c.doc_id, c.chunk_index, c.token_start, c.token_end,
                     shorten(texts[c]) if c in texts else None, ranks)
                 for rank, (c, score, ranks) in enumerate(hits, 1)] for hits in results]

    def _dense_rankings(self, queries: Sequence[str], depth: int) -> list[list[tuple[ChunkId, float]]]:
        """Each query's chunks by vector, best first; none for a blank query (it means nothing to embed)."""
        asked = [i for i, query in enumerate(queries) if query.strip()]
        found: list[list[tuple[ChunkId, float]]] = [[] for _ in queries]
        if asked:
            ranked = self.index.search(self.encode([queries[i] for i in asked]), depth, self.params)
            for i, row in zip(asked, ranked):
                found[i] = [(self.index.ids.row(j), score) for j, score in row]
        return found

    def _texts(self, chunks: set[ChunkId]) -> dict[ChunkId, str]:
        """The texts of ``chunks``: from the lexical index when there is one, else from the run's corpus
        (missing when neither has them)."""
        if not chunks:
            return {}
        if self.lexical is not None:
            return _lexical_texts(self.lexical, chunks)
        try:
            from docstream.tasks.chunk_text import corpus_reader, read_snippets

            corpus, tokenizer = corpus_reader(self.out)(), self._run_tokenizer()
        except (OSError, ValueError):
            return {}
        return read_snippets(corpus, tokenizer, sorted(chunks, key=_order), limit=None)

    def _run_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from docstream.tasks.chunk_text import run_tokenizer

            self._tokenizer = run_tokenizer(self.out)
        return self._tokenizer


def search(out: str | Path, query: str, k: int = 10, pooling: str = DEFAULT_POOLING, factory: str | None = None,
           **options) -> list[Hit]:
    """The ``k`` chunks of the run at ``out`` that best answer ``query`` (see :class:`Searcher` for ``options``,
    e.g. ``mode``)."""
    return Searcher(out, pooling, factory, **options).search(query, k)


def _order(chunk: ChunkId) -> tuple[str, int]:
    return chunk.doc_id, chunk.chunk_index


def _dense(out: Path, pooling: str, factory: str | None, metric: str | None, update: bool,
           embedder: str | Path | None, embedder_options: dict) -> tuple[LoadedIndex, Callable]:
    """The dense index to search and the function that embeds queries for it."""
    if pooling == DEFAULT_POOLING:
        from docstream.tasks.embedder import QueryEncoder, resolve_embedder

        if embedder_options:
            raise ValueError(f"{', '.join(sorted(embedder_options))} apply to the run's own model (pooling "
                             f"'last', 'mean' or 'state'); the embedder is chosen with embedder=")
        files = resolve_embedder(embedder)
        index = _open_index(out, pooling, factory, metric, update, files)
        return index, QueryEncoder(files).encode
    from docstream.store.reader import check_pooling
    from docstream.tasks.embed import QueryEmbedder

    check_pooling(pooling)
    if embedder is not None:
        raise ValueError(f"embedder= applies to pooling 'embedder', not to the run's own {pooling!r} vectors")
    index = _open_index(out, pooling, factory, metric, update, None)
    query_embedder = QueryEmbedder(out, **embedder_options)
    return index, lambda texts: query_embedder.embed_many(texts, pooling)


def _open_index(out: Path, pooling: str, factory: str | None, metric: str | None, update: bool,
                files) -> LoadedIndex:
    """The dense index to search, updated first when asked (and stale); its factory and metric must be the
    requested ones, and an embedder index must hold ``files``' vectors."""
    from docstream.tasks.index import load_index, read_meta, update_index

    saved = read_meta(out, pooling)
    factory = factory or (saved.factory if saved else DEFAULT_FACTORY)
    metric = metric or (saved.metric if saved else "cosine")
    fingerprint = files.fingerprint if files is not None else None
    fresh = (saved is not None and saved.seq == newest_commit(out) and saved.embedder == fingerprint
             and (saved.factory, saved.metric) == (factory, metric))
    if update and not fresh:
        update_index(out, pooling, factory, metric, embedder=files.model if files is not None else None,
                     progress=False)
    loaded = load_index(out, pooling)
    if (loaded.meta.factory, loaded.meta.metric) != (factory, metric):
        raise ValueError(f"the {pooling!r} index of {str(out)!r} is {loaded.meta.factory!r} with metric "
                         f"{loaded.meta.metric!r}, not {factory!r} with {metric!r}; rebuild it with "
                         f"`docstream index --run {out} --pooling {pooling} --factory {factory} --rebuild`")
    if loaded.meta.embedder != fingerprint:
        raise ValueError(f"the {pooling!r} index of {str(out)!r} holds another embedder's vectors; rebuild it "
                         f"with `docstream index --run {out} --rebuild` (and --embedder for your own embedder)")
    return loaded


def _open_lexical(out: Path, update: bool) -> LexicalIndex:
    """The lexical index, updated first when asked (and stale)."""
    from docstream.tasks.lexical import META_FORMAT, load_lexical, read_lexical_meta, update_lexical

    saved = read_lexical_meta(out)
    if update and (saved is None or saved.seq != newest_commit(out) or saved.format < META_FORMAT):
        update_lexical(out)
    return load_lexical(out)


def newest_commit(out: str | Path) -> int:
    """The number of the run's newest commit record (see :meth:`RunStore.newest_record`)."""
    from docstream.store.run_store import RunStore

    if not (Path(out) / "config.json").is_file():
        raise FileNotFoundError(f"{str(out)!r} is not a docstream run folder (no config.json); pass the --out "
                                f"of a `docstream run`")
    return RunStore(out).newest_record()


def _lexical_texts(lexical: LexicalIndex, chunks: set[ChunkId]) -> dict[ChunkId, str]:
    """The texts of ``chunks`` as the lexical index stores them (a document's chunks looked up by its id)."""
    texts = {}
    for doc_id in {c.doc_id for c in chunks}:
        for hit in lexical.document_chunks(doc_id):
            texts[_chunk_of(hit)] = hit.text
    return {c: texts[c] for c in chunks if c in texts}


def _chunk_of(hit) -> ChunkId:
    """The chunk id of a lexical hit."""
    from docstream.corpus.chunk_id import ChunkId

    return ChunkId(hit.doc_id, hit.chunk_index, hit.token_start, hit.token_end)


# ---------------------------------------------------------------------------------------------
# Output


def format_hits(hits: list[Hit], width: int = 80) -> str:
    """A ranked table: rank, score, doc id, chunk index, token range, the retrievers that found the chunk
    with their ranks (L = lexical, D = dense), and the snippet (cut to ``width`` chars)."""
    header = ("rank", "score", "doc id", "chunk", "tokens", "found", "snippet")
    rows = [(str(h.rank), f"{h.score:.4f}", h.doc_id, str(h.chunk_index), f"{h.token_start}-{h.token_end}",
             " ".join(f"{name[0].upper()}{rank}" for name, rank in h.retrievers.items()),
             shorten(h.snippet, width) if h.snippet is not None else "(text unavailable)") for h in hits]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(6)]
    right = (True, True, False, True, False, False)
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        lines.append("  ".join([*cells, row[6]]).rstrip())
    return "\n".join(lines)
