"""Task heads over a run's outputs: embeddings, FAISS indexes and semantic search.

Tasks read a run only through :class:`~docstream.store.run_store.RunStore` (via
:mod:`docstream.store.reader`), never its files directly. Names are imported on first use, so
importing this package (as the command line does) loads neither torch nor FAISS.

Python use::

    from docstream.tasks import document_vectors, update_index, search

    docs = document_vectors("out/", pooling="mean")        # one L2-normalized vector per document
    update_index("out/", pooling="last", factory="Flat")   # adds only commits not indexed yet
    for hit in search("out/", "query text", k=5):
        print(hit.rank, hit.score, hit.doc_id, hit.chunk_index, hit.snippet)
"""
from __future__ import annotations

from docstream.lazy import lazy_exports

_EXPORTS = {
    "docstream.tasks.embed": ("DocumentVectors", "QueryEmbedder", "chunk_vectors", "document_vectors", "embed_text",
                              "l2_normalize"),
    "docstream.tasks.index": ("ChunkId", "IdTable", "IndexMeta", "LoadedIndex", "UpdateResult", "build_index",
                              "load_index", "read_meta", "update_index"),
    "docstream.tasks.search": ("Hit", "Searcher", "search"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
