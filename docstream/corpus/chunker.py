"""Tokenizing a document lazily into fixed-size token chunks.

The model streams a document chunk by chunk, carrying its recurrent state across
chunks, so the chunker must give the same token stream every time (for resume)
and whatever the chunk length (so runs with different chunk lengths are
comparable). The token stream is therefore defined as the concatenation of
``tokenizer.encode(piece)`` over :meth:`Document.pieces`, whose cuts depend only
on the text; chunks are consecutive ``chunk_len`` slices of that stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from docstream.corpus.documents import Document, TextStats
from docstream.tokenizer.base import Tokenizer


class ResumeError(ValueError):
    """A document no longer reaches the token a resumed run must continue from."""


@dataclass(frozen=True)
class TokenChunk:
    """A run of consecutive tokens of one document.

    Attributes:
        index: the chunk's index within the document, from 0.
        start: the token offset of its first token (inclusive).
        end: the token offset after its last token (exclusive).
        tokens: the token ids, ``end - start`` of them.
        is_last: whether this is the document's final chunk.
    """

    index: int
    start: int
    end: int
    tokens: list[int]
    is_last: bool


def iter_tokens(doc: Document, tokenizer: Tokenizer, stats: TextStats | None = None) -> Iterator[list[int]]:
    """The document's token stream, lazily, as the (non-empty) token lists of its pieces.

    Memory is bounded by one piece of text and its tokens. Repairs made while reading the
    text are added to ``stats`` (see :meth:`Document.pieces`).
    """
    for piece in doc.pieces(stats):
        ids = tokenizer.encode(piece)
        if ids:
            yield ids


def iter_chunks(doc: Document, tokenizer: Tokenizer, chunk_len: int, start_token: int = 0,
                stats: TextStats | None = None) -> Iterator[TokenChunk]:
    """The document's token stream in chunks of exactly ``chunk_len`` tokens, the last one shorter or equal.

    The final chunk (1 to ``chunk_len`` tokens) has ``is_last`` set; to know which chunk is
    final, a full chunk is only emitted once a token after it has been seen. A document of
    zero tokens yields nothing.

    ``start_token`` resumes a document: that many tokens are skipped (they are still
    tokenized, but not kept) and the chunks continue with the indices and offsets they had in
    the uninterrupted sequence. Skipping exactly all the tokens yields nothing.

    Raises:
        ValueError: (at the call) ``chunk_len < 1``, or ``start_token`` negative or not a
            multiple of ``chunk_len``; (while iterating) ``start_token`` beyond the document's
            tokens, meaning the document changed since the run that was resumed.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be at least 1, got {chunk_len}")
    if start_token < 0 or start_token % chunk_len:
        raise ValueError(f"start_token must be a non-negative multiple of chunk_len={chunk_len} (a chunk "
                         f"boundary), got {start_token}; resume from the end of the last completed chunk")
    return _chunks(doc, tokenizer, chunk_len, start_token, stats)


def _chunks(doc: Document, tokenizer: Tokenizer, chunk_len: int, start_token: int,
            stats: TextStats | None) -> Iterator[TokenChunk]:
    """The generator behind :func:`iter_chunks`, its arguments already checked."""
    pending: list[int] = []
    offset = start_token  # token offset of pending[0]
    for ids in _skip(iter_tokens(doc, tokenizer, stats), start_token, doc):
        pending.extend(ids)
        taken = 0
        while len(pending) - taken > chunk_len:  # a token follows, so this chunk is not the last
            yield _chunk(pending[taken:taken + chunk_len], offset, chunk_len, is_last=False)
            taken += chunk_len
            offset += chunk_len
        del pending[:taken]
    if pending:
        yield _chunk(pending, offset, chunk_len, is_last=True)


def _chunk(tokens: list[int], start: int, chunk_len: int, is_last: bool) -> TokenChunk:
    """The chunk of ``tokens`` beginning at token offset ``start`` (a multiple of ``chunk_len``)."""
    return TokenChunk(start // chunk_len, start, start + len(tokens), tokens, is_last)


def _skip(runs: Iterator[list[int]], count: int, doc: Document) -> Iterator[list[int]]:
    """``runs`` without their first ``count`` tokens, which are dropped as they come.

    Raises:
        ValueError: the runs hold fewer than ``count`` tokens.
    """
    left = count
    for ids in runs:
        if left >= len(ids):
            left -= len(ids)
            continue
        yield ids[left:] if left else ids
        left = 0
    if left:
        raise ResumeError(f"cannot resume document {doc.doc_id!r} ({doc.source}) at token {count}: it has only "
                         f"{count - left} tokens now; it changed since the run being resumed, so restart it "
                         f"from token 0")


def text_of_span(doc: Document, tokenizer: Tokenizer, start: int, end: int) -> str:
    """The text of tokens ``start`` (inclusive) to ``end`` (exclusive) of the document's token stream.

    Used for snippets: the document is re-tokenized lazily and reading stops at ``end``, so
    only what precedes the span is processed. The span's tokens are decoded together; a span
    edge inside a multi-byte character decodes the way the tokenizer decodes partial bytes.

    Raises:
        ValueError: not ``0 <= start <= end``, or ``end`` beyond the document's tokens.
    """
    if not 0 <= start <= end:
        raise ValueError(f"token span must satisfy 0 <= start <= end, got start={start}, end={end}")
    span: list[int] = []
    offset = 0  # token offset of the next run
    for ids in iter_tokens(doc, tokenizer):
        if offset + len(ids) > start:
            span.extend(ids[max(0, start - offset):end - offset])
        offset += len(ids)
        if offset >= end:
            return tokenizer.decode(span)
    if offset >= end:  # an empty span at the very end
        return tokenizer.decode(span)
    raise ValueError(f"token span [{start}, {end}) of document {doc.doc_id!r} ({doc.source}) ends past its "
                     f"{offset} tokens")
