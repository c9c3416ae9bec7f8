"""The corpus stage: documents read lazily from text files, JSON Lines or Parquet (bad ones recorded as
rejections, never stopping a run), and cut into token chunks.

Python use::

    from docstream.corpus import iter_corpus, iter_chunks

    for item in iter_corpus("corpus/"):   # Document or Rejected, in a deterministic order
        ...
"""

from __future__ import annotations

from docstream.lazy import lazy_exports

# names are imported on first use (PEP 562): code that needs only chunk ids (a search) skips the readers
_EXPORTS = {
    "docstream.corpus.chunker": ("TokenChunk", "iter_chunks", "iter_tokens", "text_of_span"),
    "docstream.corpus.documents": ("MAX_PIECE_CHARS", "MIN_PIECE_CHARS", "READ_BLOCK_SIZE", "Document", "Item",
                                   "Rejected", "TextStats", "printable_name"),
    "docstream.corpus.readers": ("iter_corpus",),
    "docstream.corpus.walk": ("FORMATS", "SUFFIXES"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
