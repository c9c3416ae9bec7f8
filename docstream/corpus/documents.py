"""Documents of a corpus and rejections: a document's text is read lazily, in pieces whose cuts depend
only on the text (never on how the bytes were read), because the chunker tokenizes piece by piece
and a resumed run must see exactly the same tokens. A bad document becomes a :class:`Rejected`
record with a machine-friendly reason."""
from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

READ_BLOCK_SIZE = 64 * 1024


MIN_PIECE_CHARS = 16 * 1024


MAX_PIECE_CHARS = 256 * 1024


#: in-memory texts are cleaned and segmented in slices of this many characters
_TEXT_SLICE_CHARS = 64 * 1024


SURROGATES = re.compile("[\ud800-\udfff]")


#: what :func:`printable_name` escapes: backslash (the escape character itself), C0 controls, DEL and
#: surrogates (``surrogateescape`` turns each byte of a file name that is not UTF-8 into U+DC80..U+DCFF)
_NAME_ESCAPES = re.compile("[\\\\\x00-\x1f\x7f\ud800-\udfff]")


_NONBLANK = re.compile(r"[^\s\x00]")


_THROUGH_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


Fragments = Callable[["TextStats"], Iterator[str]]


@dataclass
class TextStats:
    """Counts of the repairs made while reading one document's text.

    Attributes:
        invalid_utf8_bytes: bytes that were not valid UTF-8, each replaced with one U+FFFD
            (unpaired surrogates in JSON or Parquet strings are counted and replaced alike,
            since no tokenizer can encode them).
        nul_chars: NUL characters removed.
    """

    invalid_utf8_bytes: int = 0
    nul_chars: int = 0


@dataclass(frozen=True)
class Document:
    """One readable document of a corpus; its text is read only when asked for.

    Attributes:
        doc_id: stable id: the path relative to the corpus root (POSIX separators) for text
            files, the id field / column for JSON Lines and Parquet.
        source: where it came from, for messages: a file path, ``"file.jsonl:LINE"``
            (lines count from 1) or ``"file.parquet:row N"`` (rows count from 0).

    Ids and sources made of file names pass through :func:`printable_name`, so a name with bytes
    that are not UTF-8 still gives text that Parquet and JSON can store.
    """

    doc_id: str
    source: str
    _fragments: Fragments = field(repr=False, compare=False)

    @classmethod
    def from_text(cls, doc_id: str, text: str, source: str | None = None) -> Document:
        """A document whose text is already in memory (tests, JSON Lines, Parquet)."""
        return cls(doc_id, source if source is not None else doc_id, lambda stats: _text_fragments(text, stats))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], doc_id: str | None = None,
                  read_block_size: int = READ_BLOCK_SIZE) -> Document:
        """A document read lazily from a UTF-8 text file (no emptiness or binary check).

        ``doc_id`` defaults to the file name (through :func:`printable_name`). Opening errors
        surface when iterating ``pieces()``.
        """
        check_positive("read_block_size", read_block_size)
        file = Path(path)
        return cls(doc_id if doc_id is not None else printable_name(file.name), printable_name(str(file)),
                   lambda stats: file_fragments(file, read_block_size, stats))

    def pieces(self, stats: TextStats | None = None, *, min_piece_chars: int = MIN_PIECE_CHARS,
               max_piece_chars: int = MAX_PIECE_CHARS) -> Iterator[str]:
        """The text, lazily, in pieces of at most ``max_piece_chars`` characters.

        Every call starts over from the beginning. A piece ends right after the first newline
        at which it has at least ``min_piece_chars`` characters; a piece that reaches
        ``max_piece_chars`` with no such newline ends after its last whitespace character past
        ``min_piece_chars``, or hard at ``max_piece_chars`` if it has none. So every piece but
        the last has between ``min_piece_chars`` and ``max_piece_chars`` characters, and the
        cuts depend only on the text, never on read block sizes.

        NUL characters are removed and invalid UTF-8 is replaced (one U+FFFD per bad byte);
        the counts of both are *added* to ``stats`` as the pieces are read, so pass a fresh
        :class:`TextStats` and read it after the iteration has finished.

        Raises:
            ValueError: the piece limits are not ``1 <= min_piece_chars <= max_piece_chars``.
            OSError: (while iterating) a file became unreadable after the corpus listed it.
        """
        if not 1 <= min_piece_chars <= max_piece_chars:
            raise ValueError(f"piece limits must satisfy 1 <= min_piece_chars <= max_piece_chars, got "
                             f"min_piece_chars={min_piece_chars}, max_piece_chars={max_piece_chars}")
        counts = stats if stats is not None else TextStats()
        return _segment(self._fragments(counts), min_piece_chars, max_piece_chars)


@dataclass(frozen=True)
class Rejected:
    """A corpus entry that will not be processed, and why.

    Attributes:
        doc_id: the document's id, or its ``source`` when no id could be read
            (a bad JSON line, a missing id field, an unreadable file of JSON Lines).
        source: where it came from, as for :class:`Document`.
        reason: a short machine-friendly reason: ``"empty"``, ``"duplicate_id"``,
            ``"unreadable"``, ``"missing_field"``, ``"bad_id"``, ``"not_text"``,
            ``"bad_json"``, ``"not_object"`` or ``"outside_root"``; the streaming engine adds
            ``"changed"`` and ``"non_finite"`` (the model's outputs for it turned NaN or inf).
        detail: a message for people.
    """

    doc_id: str
    source: str
    reason: str
    detail: str


Item = Document | Rejected


def check_positive(name: str, value: int) -> None:
    """Reject a size that would make reading loop forever or do nothing."""
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def printable_name(name: str) -> str:
    """A file name or path as printable text that always encodes to UTF-8, without losing anything.

    The name's bytes that are not UTF-8 (lone surrogates, as the OS hands them to Python) and its
    control characters become ``\\xNN``; any other lone surrogate becomes ``\\uNNNN``; a backslash
    becomes ``\\\\``. Escaping the escape character keeps the mapping one-to-one: a name that
    literally reads ``doc\\xff.txt`` becomes ``doc\\\\xff.txt``, not the id of the file named
    ``doc`` + byte 0xFF + ``.txt``. Names with none of these characters (nearly all) are unchanged.
    """
    return _NAME_ESCAPES.sub(_escape_char, name)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x5C:
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as ``surrogateescape`` stores it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def new_decoder() -> codecs.IncrementalDecoder:
    """A UTF-8 decoder that drops a leading BOM and turns each invalid byte into a lone surrogate.

    ``surrogateescape`` keeps a one-to-one mapping from invalid bytes to code points, so
    :func:`_clean` can count them exactly; being incremental, it keeps a multi-byte character
    split across read blocks intact.
    """
    return codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")


def _clean(text: str, stats: TextStats) -> str:
    """``text`` with NULs removed and surrogates replaced by U+FFFD, counted into ``stats``."""
    if "\x00" in text:
        stats.nul_chars += text.count("\x00")
        text = text.replace("\x00", "")
    text, replaced = SURROGATES.subn("\ufffd", text)
    stats.invalid_utf8_bytes += replaced
    return text


def file_fragments(path: Path, block_size: int, stats: TextStats) -> Iterator[str]:
    """The cleaned text of a file, one decoded read block at a time."""
    decoder = new_decoder()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            yield _clean(decoder.decode(block), stats)
        yield _clean(decoder.decode(b"", final=True), stats)


def _text_fragments(text: str, stats: TextStats) -> Iterator[str]:
    """The cleaned text of an in-memory string, in slices (cleaning copies, so keep them small)."""
    for start in range(0, len(text), _TEXT_SLICE_CHARS):
        yield _clean(text[start:start + _TEXT_SLICE_CHARS], stats)


def _segment(fragments: Iterable[str], min_chars: int, max_chars: int) -> Iterator[str]:
    """Re-cut text fragments of any sizes into pieces by the rule of :meth:`Document.pieces`.

    Invariant between fragments: the buffer holds no possible cut (it is shorter than
    ``max_chars`` and has no newline at or after index ``min_chars - 1``), so only a newline
    in the new fragment past that index, or reaching ``max_chars``, can make one. The buffer
    is joined only then, which keeps the work linear even for tiny fragments.
    """
    parts: list[str] = []
    size = 0
    for text in fragments:
        if not text:
            continue
        offset = size
        parts.append(text)
        size += len(text)
        if size < min_chars:
            continue
        if size < max_chars and text.find("\n", max(0, min_chars - 1 - offset)) < 0:
            continue
        rest = yield from _cut("".join(parts), min_chars, max_chars)
        parts = [rest] if rest else []
        size = len(rest)
    if parts:
        yield "".join(parts)


def _cut(buffer: str, min_chars: int, max_chars: int) -> Iterator[str]:
    """Yield every piece that ``buffer`` already determines; return the undetermined rest."""
    pos = 0
    while len(buffer) - pos >= min_chars:
        end = _piece_end(buffer, pos, min_chars, max_chars)
        if end is None:
            break
        yield buffer[pos:end]
        pos = end
    return buffer[pos:]


def _piece_end(buffer: str, pos: int, min_chars: int, max_chars: int) -> int | None:
    """Where the piece starting at ``pos`` ends, or ``None`` if that needs more text."""
    newline = buffer.find("\n", pos + min_chars - 1, pos + max_chars)
    if newline >= 0:
        return newline + 1
    if len(buffer) - pos < max_chars:
        return None
    match = _THROUGH_LAST_SPACE.match(buffer, pos + min_chars - 1, pos + max_chars)
    return match.end() if match else pos + max_chars


def is_blank(text: str) -> bool:
    """Whether ``text`` has nothing but whitespace and NULs."""
    return _NONBLANK.search(text) is None
