"""Semantic search over a run's chunks: embed the query the run's way, search the FAISS index, show snippets.

Python use::

    from docstream.tasks import Searcher, search

    hits = search("out/", "how are states resumed?", k=5)          # one-off: loads the model each call
    searcher = Searcher("out/", pooling="mean")                      # many queries: load once
    for hit in searcher.search("query text"):
        print(hit.rank, hit.score, hit.doc_id, hit.chunk_index, hit.snippet)

Command line: ``docstream search`` and ``docstream index`` (:mod:`docstream.commands.search`).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from docstream.tasks.embed import QueryEmbedder
    from docstream.tasks.index import ChunkId, LoadedIndex
    from docstream.tokenizer import Tokenizer

__all__ = ["Hit", "SNIPPET_CHARS", "Searcher", "format_hits", "read_snippets", "search", "shorten"]

# Importing this module stays cheap (no torch, no FAISS: `docstream.tasks` exports it lazily), so the heavy
# modules are imported where they are used and the defaults are spelled out here; a test checks they equal
# docstream.model.pooling.DEFAULT_POOLING and docstream.tasks.index.DEFAULT_FACTORY.
DEFAULT_POOLING = "mean"
DEFAULT_FACTORY = "Flat"

#: snippets are cut to this many characters
SNIPPET_CHARS = 200
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Hit:
    """One ranked search result. ``score``: cosine similarity (metric "cosine"), inner product ("ip")
    or squared L2 distance ("l2"); ``snippet`` is None when the document could not be re-read."""

    rank: int
    score: float
    doc_id: str
    chunk_index: int
    token_start: int
    token_end: int
    snippet: str | None

    def to_json(self) -> dict:
        return asdict(self)


class Searcher:
    """Searches the ``pooling`` index of the run at ``out``; loads the model and index once.

    ``factory`` None means the existing index's factory, or :data:`DEFAULT_FACTORY` when there is
    none. With ``update`` (the default) the index is first brought up to the run's latest commit
    (built if missing); without it the existing index is used as it is. ``params`` are FAISS search
    parameters (``"nprobe=8"``, ``"efSearch=64"``); ``embedder_options`` go to :class:`QueryEmbedder`.
    """

    def __init__(self, out: str | Path, pooling: str = DEFAULT_POOLING, factory: str | None = None,
                 metric: str | None = None, *, update: bool = True, params: str | None = None,
                 embedder: QueryEmbedder | None = None, **embedder_options):
        from docstream.store.reader import check_pooling
        from docstream.tasks.embed import QueryEmbedder

        self.out, self.pooling, self.params = Path(out), check_pooling(pooling), params
        self.index = _open_index(self.out, pooling, factory, metric, update)
        self.embedder = embedder if embedder is not None else QueryEmbedder(out, **embedder_options)
        self._corpus = corpus_reader(self.out)

    def search(self, query: str, k: int = 10, snippets: bool = True) -> list[Hit]:
        """The ``k`` chunks nearest to ``query``, best first."""
        vector = self.embedder.embed(query, self.pooling)
        ranked = self.index.search(vector, k, self.params)[0]
        chunks = [self.index.ids.row(i) for i, _ in ranked]
        texts = self._snippets(chunks) if snippets else {}
        return [Hit(rank, score, c.doc_id, c.chunk_index, c.token_start, c.token_end, texts.get(c))
                for rank, ((_, score), c) in enumerate(zip(ranked, chunks), 1)]

    def _snippets(self, chunks: list[ChunkId]) -> dict[ChunkId, str]:
        """Snippets of ``chunks`` from the run's corpus (none when the corpus is gone)."""
        try:
            corpus = self._corpus()
        except (OSError, ValueError):
            return {}
        return read_snippets(corpus, self.embedder.tokenizer, chunks)


def search(out: str | Path, query: str, k: int = 10, pooling: str = DEFAULT_POOLING, factory: str | None = None,
           **options) -> list[Hit]:
    """The ``k`` chunks of the run at ``out`` nearest to ``query`` (see :class:`Searcher` for ``options``)."""
    return Searcher(out, pooling, factory, **options).search(query, k)


def _open_index(out: Path, pooling: str, factory: str | None, metric: str | None, update: bool) -> LoadedIndex:
    """The index to search, updated first when asked; its factory and metric must be the requested ones."""
    from docstream.tasks.index import load_index, read_meta, update_index

    saved = read_meta(out, pooling)
    factory = factory or (saved.factory if saved else DEFAULT_FACTORY)
    metric = metric or (saved.metric if saved else "cosine")
    if update:
        update_index(out, pooling, factory, metric)
    loaded = load_index(out, pooling)
    if (loaded.meta.factory, loaded.meta.metric) != (factory, metric):
        raise ValueError(f"the {pooling!r} index of {str(out)!r} is {loaded.meta.factory!r} with metric "
                         f"{loaded.meta.metric!r}, not {factory!r} with {metric!r}; rebuild it with "
                         f"`docstream index --run {out} --pooling {pooling} --factory {factory} --rebuild`")
    return loaded


def corpus_reader(out: Path) -> Callable[[], Iterable]:
    """A function giving a fresh iterator over the run's corpus (the resolved input path of its identity)."""
    from docstream.corpus import iter_corpus
    from docstream.store.reader import read_run_config, run_settings

    settings = run_settings(out)
    path = read_run_config(out)["identity"].get("input", str(settings.input))
    return lambda: iter_corpus(path, settings.input_format, settings.id_field, settings.text_field)


def read_snippets(corpus: Iterable, tokenizer: Tokenizer, chunks: list[ChunkId],
                  limit: int | None = SNIPPET_CHARS) -> dict[ChunkId, str]:
    """The text of each chunk (whitespace collapsed and cut to ``limit`` characters; whole when ``limit`` is
    None), reading the corpus only
    until every wanted document was seen. Chunks whose document is missing or unreadable are left out."""
    from docstream.corpus import Document

    wanted: dict[str, list[ChunkId]] = {}
    for chunk in chunks:
        wanted.setdefault(chunk.doc_id, []).append(chunk)
    texts: dict[ChunkId, str] = {}
    try:
        for item in corpus:
            if isinstance(item, Document) and item.doc_id in wanted:
                for chunk in wanted.pop(item.doc_id):
                    text = _span_text(item, tokenizer, chunk)
                    if text is not None:
                        texts[chunk] = text if limit is None else shorten(text, limit)
            if not wanted:
                break
    except (OSError, ValueError):
        pass
    return texts


def _span_text(doc, tokenizer: Tokenizer, chunk: ChunkId) -> str | None:
    """The text of ``chunk`` in ``doc``, or None when the document no longer reaches it."""
    from docstream.corpus.chunker import text_of_span

    try:
        return text_of_span(doc, tokenizer, chunk.token_start, chunk.token_end)
    except (OSError, ValueError):  # the file vanished or shrank since the run
        return None


def shorten(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to ``limit`` characters with "…"."""
    flat = _SPACES.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


# ---------------------------------------------------------------------------------------------
# Output


def format_hits(hits: list[Hit], width: int = 80) -> str:
    """A ranked table: rank, score, doc id, chunk index, token range, snippet (cut to ``width`` chars)."""
    header = ("rank", "score", "doc id", "chunk", "tokens", "snippet")
    rows = [(str(h.rank), f"{h.score:.4f}", h.doc_id, str(h.chunk_index), f"{h.token_start}-{h.token_end}",
             shorten(h.snippet, width) if h.snippet is not None else "(text unavailable)") for h in hits]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    right = (True, True, False, True, False)
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        lines.append("  ".join([*cells, row[5]]).rstrip())
    return "\n".join(lines)
