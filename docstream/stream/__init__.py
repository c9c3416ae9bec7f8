"""Streaming long documents through RWKV models: corpus readers, chunking, and the streaming engine."""

from docstream.stream.chunker import TokenChunk, iter_chunks, iter_tokens, text_of_span
from docstream.stream.corpus import Document, Rejected, TextStats, iter_corpus

__all__ = [
    "Document",
    "Rejected",
    "TextStats",
    "TokenChunk",
    "iter_chunks",
    "iter_corpus",
    "iter_tokens",
    "text_of_span",
]
