"""The corpus stage: documents read lazily from text files, JSON Lines or Parquet (bad ones recorded as
rejections, never stopping a run), and cut into token chunks.

Python use::

    from docstream.corpus import iter_corpus, iter_chunks

    for item in iter_corpus("corpus/"):   # Document or Rejected, in a deterministic order
        ...
"""

from docstream.corpus.chunker import TokenChunk, iter_chunks, iter_tokens, text_of_span
from docstream.corpus.documents import (MAX_PIECE_CHARS, MIN_PIECE_CHARS, READ_BLOCK_SIZE, Document, Item, Rejected,
                                        TextStats, printable_name)
from docstream.corpus.readers import iter_corpus
from docstream.corpus.walk import FORMATS, SUFFIXES

__all__ = ["FORMATS", "MAX_PIECE_CHARS", "MIN_PIECE_CHARS", "READ_BLOCK_SIZE", "SUFFIXES", "Document", "Item",
           "Rejected", "TextStats", "TokenChunk", "iter_chunks", "iter_corpus", "iter_tokens", "printable_name",
           "text_of_span"]
