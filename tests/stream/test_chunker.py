"""Chunker: chunk sizes and offsets, is_last, resume, token stream identity, spans, with the World tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from docstream.corpus import Document, TextStats, iter_corpus
from docstream.corpus.chunker import TokenChunk, iter_chunks, iter_tokens, text_of_span
from docstream.tokenizer import WorldTokenizer, default_world_vocab_path

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. Ça coûte 3,14 €.\n"
    "中文：我们今天去公园散步。日本語：吾輩は猫である。 Emoji: 😀🎉👍🏽\n\n"
    "def greet(name):\n\treturn f'hi {name}!'\r\n"
)


@pytest.fixture(scope="module")
def tokenizer() -> WorldTokenizer:
    return WorldTokenizer(default_world_vocab_path())


@pytest.fixture(scope="module")
def long_doc() -> Document:
    """A document of several pieces (about 100k characters, default piece limits)."""
    return Document.from_text("long", "".join(f"{i}: {PARAGRAPH}" for i in range(700)))


def stream_of(doc: Document, tokenizer: WorldTokenizer) -> list[int]:
    """The reference token stream: each piece encoded on its own, concatenated."""
    return [token for piece in doc.pieces() for token in tokenizer.encode(piece)]


def check_chunks(chunks: list[TokenChunk], stream: list[int], chunk_len: int, first_index: int = 0) -> None:
    """Consecutive chunks of ``chunk_len`` tokens covering ``stream`` from the first chunk's start."""
    assert chunks
    start = first_index * chunk_len
    for position, chunk in enumerate(chunks):
        assert chunk.index == first_index + position
        assert chunk.start == start and chunk.end == start + len(chunk.tokens)
        assert chunk.tokens == stream[chunk.start:chunk.end]
        assert chunk.is_last == (position == len(chunks) - 1)
        start = chunk.end
    assert all(len(chunk.tokens) == chunk_len for chunk in chunks[:-1])
    assert 1 <= len(chunks[-1].tokens) <= chunk_len
    assert chunks[-1].end == len(stream)


def test_long_document_has_several_pieces(long_doc: Document) -> None:
    assert len(list(long_doc.pieces())) >= 5


@pytest.mark.parametrize("chunk_len", [1, 7, 512, 4096])
def test_chunks_cover_the_token_stream(long_doc: Document, tokenizer: WorldTokenizer, chunk_len: int) -> None:
    stream = stream_of(long_doc, tokenizer)
    chunks = list(iter_chunks(long_doc, tokenizer, chunk_len))
    check_chunks(chunks, stream, chunk_len)
    assert [token for chunk in chunks for token in chunk.tokens] == stream
    assert [token for ids in iter_tokens(long_doc, tokenizer) for token in ids] == stream


def test_chunk_boundaries_only_depend_on_the_stream(long_doc: Document, tokenizer: WorldTokenizer) -> None:
    streams = {n: [t for c in iter_chunks(long_doc, tokenizer, n) for t in c.tokens] for n in (3, 100, 1024, 10**6)}
    assert len({tuple(stream) for stream in streams.values()}) == 1


def test_exact_multiple_ends_with_a_full_last_chunk(tokenizer: WorldTokenizer) -> None:
    doc = Document.from_text("d", PARAGRAPH)
    total = len(stream_of(doc, tokenizer))
    chunks = list(iter_chunks(doc, tokenizer, total // 2 if total % 2 == 0 else total))
    assert chunks[-1].is_last and len(chunks[-1].tokens) == chunks[0].end - chunks[0].start
    assert chunks[-1].end == total


def test_chunk_len_larger_than_the_document_gives_one_last_chunk(tokenizer: WorldTokenizer) -> None:
    doc = Document.from_text("short", "Hello, world.")
    (chunk,) = iter_chunks(doc, tokenizer, 10_000)
    assert chunk == TokenChunk(0, 0, len(chunk.tokens), tokenizer.encode("Hello, world."), True)


def test_chunk_len_one(tokenizer: WorldTokenizer) -> None:
    doc = Document.from_text("d", PARAGRAPH)
    stream = stream_of(doc, tokenizer)
    chunks = list(iter_chunks(doc, tokenizer, 1))
    check_chunks(chunks, stream, 1)
    assert len(chunks) == len(stream)


@pytest.mark.parametrize("chunk_len", [1, 64, 1000])
def test_resume_gives_the_tail_of_the_same_sequence(long_doc: Document, tokenizer: WorldTokenizer,
                                                    chunk_len: int) -> None:
    full = list(iter_chunks(long_doc, tokenizer, chunk_len))
    for resume_index in (1, len(full) // 2, len(full) - 1):
        resumed = list(iter_chunks(long_doc, tokenizer, chunk_len, start_token=resume_index * chunk_len))
        assert resumed == full[resume_index:]


def test_resume_at_the_very_end_yields_nothing(tokenizer: WorldTokenizer) -> None:
    doc = Document.from_text("d", "one two three four")
    total = len(stream_of(doc, tokenizer))
    assert list(iter_chunks(doc, tokenizer, 1, start_token=total)) == []


def test_resume_past_the_end_raises_while_iterating(tokenizer: WorldTokenizer) -> None:
    doc = Document.from_text("d", "one two")
    chunks = iter_chunks(doc, tokenizer, 1, start_token=100)
    with pytest.raises(ValueError, match="changed since"):
        next(chunks)


def test_zero_token_document_yields_nothing(tokenizer: WorldTokenizer) -> None:
    assert list(iter_chunks(Document.from_text("empty", ""), tokenizer, 16)) == []
    assert list(iter_chunks(Document.from_text("nuls", "\x00\x00"), tokenizer, 16)) == []


@pytest.mark.parametrize("chunk_len", [0, -3])
def test_bad_chunk_len_raises(tokenizer: WorldTokenizer, chunk_len: int) -> None:
    with pytest.raises(ValueError, match="chunk_len"):
        iter_chunks(Document.from_text("d", "x"), tokenizer, chunk_len)


@pytest.mark.parametrize("start_token", [5, -8])
def test_start_token_must_be_a_chunk_boundary(tokenizer: WorldTokenizer, start_token: int) -> None:
    with pytest.raises(ValueError, match="multiple of chunk_len=8"):
        iter_chunks(Document.from_text("d", "x"), tokenizer, 8, start_token=start_token)


def test_stats_are_filled_from_a_file(tmp_path: Path, tokenizer: WorldTokenizer) -> None:
    (tmp_path / "f.txt").write_bytes(b"caf\xe9 \x00au lait\n" * 3)
    (doc,) = iter_corpus(tmp_path)
    stats = TextStats()
    chunks = list(iter_chunks(doc, tokenizer, 4, stats=stats))
    assert stats == TextStats(invalid_utf8_bytes=3, nul_chars=3)
    assert tokenizer.decode([t for c in chunks for t in c.tokens]) == "caf\ufffd au lait\n" * 3


def test_text_of_span(long_doc: Document, tokenizer: WorldTokenizer) -> None:
    stream = stream_of(long_doc, tokenizer)
    for start, end in [(0, 10), (5000, 5100), (len(stream) - 20, len(stream)), (30, 30)]:
        assert text_of_span(long_doc, tokenizer, start, end) == tokenizer.decode(stream[start:end])
    pieces = list(long_doc.pieces())
    first, second = (len(tokenizer.encode(piece)) for piece in pieces[:2])
    across = text_of_span(long_doc, tokenizer, first - 3, first + second + 3)
    assert pieces[1] in across


def test_text_of_span_checks_its_bounds(tokenizer: WorldTokenizer) -> None:
    doc = Document.from_text("d", "a few words")
    total = len(stream_of(doc, tokenizer))
    assert text_of_span(doc, tokenizer, 0, total) == "a few words"
    assert text_of_span(doc, tokenizer, total, total) == ""
    with pytest.raises(ValueError, match="ends past"):
        text_of_span(doc, tokenizer, 0, total + 1)
    with pytest.raises(ValueError, match="start <= end"):
        text_of_span(doc, tokenizer, 3, 2)
