"""Lazy corpus readers: text files, JSON Lines and Parquet, one document at a time.

A corpus can be far larger than memory and can hold hostile documents (invalid
UTF-8, NUL bytes, gigabyte lines, duplicate ids, unreadable files). The readers
here therefore never hold more than one document's text (text files: never more
than one *piece* of it) and never let one bad document stop a run: a bad
document becomes a :class:`Rejected` record with a machine-friendly reason, and
only configuration mistakes (missing input, unknown format, missing Parquet
columns) raise.

Text is handed out by :meth:`Document.pieces` in pieces whose boundaries depend
only on the text (never on how the bytes were read), because the chunker
tokenizes piece by piece and a resumed run must see exactly the same tokens.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("auto", "text", "jsonl", "parquet")
#: file-name suffixes (lower case) of each format, for directory walks and ``fmt="auto"``
SUFFIXES: dict[str, tuple[str, ...]] = {
    "text": (".txt", ".md"),
    "jsonl": (".jsonl", ".jsonl.gz"),
    "parquet": (".parquet",),
}
READ_BLOCK_SIZE = 64 * 1024
MIN_PIECE_CHARS = 16 * 1024
MAX_PIECE_CHARS = 256 * 1024
#: rows per Parquet record batch: small, because one row can be a whole book
PARQUET_BATCH_ROWS = 64
#: bytes at the start of a text file examined by the binary-file sniff
SNIFF_BYTES = 8 * 1024
#: a text file whose sniffed start has more than this fraction of suspicious bytes is "not_text"
BINARY_FRACTION = 0.3

#: in-memory texts are cleaned and segmented in slices of this many characters
_TEXT_SLICE_CHARS = 64 * 1024
#: code points that are never in real text: NUL, C0 controls other than whitespace and ESC, DEL,
#: and the lone surrogates U+DC80..U+DCFF that ``surrogateescape`` makes of invalid UTF-8 bytes
_SUSPICIOUS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f\udc80-\udcff]")
_SURROGATES = re.compile("[\ud800-\udfff]")
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
        _check_positive("read_block_size", read_block_size)
        file = Path(path)
        return cls(doc_id if doc_id is not None else printable_name(file.name), printable_name(str(file)),
                   lambda stats: _file_fragments(file, read_block_size, stats))

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


def iter_corpus(path: str | os.PathLike[str], fmt: str = "auto", id_field: str = "id",
                text_field: str = "text", *, read_block_size: int = READ_BLOCK_SIZE) -> Iterator[Item]:
    """The documents of a corpus, lazily, in a deterministic order; bad ones as :class:`Rejected`.

    ``path`` is a file, or a directory walked recursively in sorted order for the files of
    the format (symlinks are followed only while they stay inside the directory). ``fmt``:

    * ``"text"``: ``.txt``/``.md`` files (suffixes matched case-insensitively; an explicit
      ``fmt="text"`` accepts a single file of any name). The id is the path relative to the
      directory, or the file name. A file is rejected as ``"not_text"`` when more than 30% of
      its first 8 KiB are NUL, control (other than whitespace and ESC) or invalid UTF-8
      bytes: real text with a stray NUL stays far below that, while binary files and UTF-16
      text (convert it to UTF-8) exceed it. A directory named like a text file is reported
      as ``"unreadable"`` (its contents are walked all the same).
    * ``"jsonl"``: ``.jsonl`` or ``.jsonl.gz`` files, one JSON object per line with the id in
      ``id_field`` (a string or an integer) and the text in ``text_field``.
    * ``"parquet"``: ``.parquet`` files with ``id_field`` and ``text_field`` columns, read in
      record batches.
    * ``"auto"``: from the file's suffix; a directory means ``"text"``.

    Ids must be unique: later occurrences of an id are rejected as ``"duplicate_id"``. The
    arguments are checked now; the corpus is read while iterating.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown ``fmt``, a file whose format cannot be told from its suffix,
            a Parquet file lacking ``id_field`` or ``text_field``, or a bad ``read_block_size``.
    """
    root = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown corpus format {fmt!r}; choose one of {', '.join(map(repr, FORMATS))}")
    _check_positive("read_block_size", read_block_size)
    if not root.exists():
        raise FileNotFoundError(f"corpus path {str(root)!r} does not exist; pass a file or a directory")
    kind = _resolve_format(root, fmt)
    entries = _list_entries(root, kind)
    seen: set[str] = set()
    if kind == "text":
        return _read_text_files(entries, read_block_size, seen)
    if kind == "jsonl":
        return _read_jsonl_files(entries, id_field, text_field, seen)
    entries = _check_parquet_columns(entries, id_field, text_field)
    return _read_parquet_files(entries, id_field, text_field, seen)


# ---------------------------------------------------------------------------------------------
# Formats and directory walks


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


def _check_positive(name: str, value: int) -> None:
    """Reject a size that would make reading loop forever or do nothing."""
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _resolve_format(root: Path, fmt: str) -> str:
    """The concrete format: ``fmt`` itself, or the one ``root``'s suffix names."""
    if fmt != "auto":
        return fmt
    if root.is_dir():
        return "text"
    for kind, suffixes in SUFFIXES.items():
        if _has_suffix(root.name, suffixes):
            return kind
    known = ", ".join(s for suffixes in SUFFIXES.values() for s in suffixes)
    raise ValueError(f"cannot tell the format of {str(root)!r} from its suffix (known: {known}); "
                     f"pass fmt='text', 'jsonl' or 'parquet'")


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    """Whether ``name`` ends with one of ``suffixes``, ignoring case."""
    return name.lower().endswith(suffixes)


@dataclass(frozen=True)
class _Entry:
    """A corpus file: its id-like path relative to the root (printable) and where it lies."""

    rel: str
    path: Path

    @property
    def source(self) -> str:
        """The path for records and messages: printable, and encodable whatever bytes its name holds."""
        return printable_name(str(self.path))


def _rel_id(rel: PurePath) -> str:
    """The id of a file at ``rel`` below the corpus root: its POSIX path, made printable."""
    return printable_name(rel.as_posix())


def _list_entries(root: Path, kind: str) -> Iterator[_Entry | Rejected]:
    """The files of format ``kind`` under ``root`` (or ``root`` itself, whatever its name), lazily, sorted."""
    if not root.is_dir():
        return iter([_Entry(printable_name(root.name), root)])
    real_root = root.resolve()
    walk = _Walk(real_root, SUFFIXES[kind], flag_dirs=kind == "text", visited={real_root})
    return walk.entries(root, PurePath())


@dataclass
class _Walk:
    """A depth-first walk, entries sorted by name, following symlinks only inside the root.

    ``visited`` holds the real paths of the directories entered, so a symlink back to an
    ancestor cannot loop. With ``flag_dirs`` (text files, where each file is a document), a
    directory named like a document is also reported as unreadable, since whoever named it so
    probably meant a file; its contents are walked all the same.
    """

    real_root: Path
    suffixes: tuple[str, ...]
    flag_dirs: bool
    visited: set[Path]

    def entries(self, directory: Path, rel: PurePath) -> Iterator[_Entry | Rejected]:
        """The matching files under ``directory``, whose path relative to the root is ``rel``."""
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda child: child.name)
        except OSError as exc:
            yield Rejected(_rel_id(rel), printable_name(str(directory)), "unreadable",
                           f"cannot list directory: {exc}")
            return
        for child in children:
            yield from self._visit(child, rel / child.name)

    def _visit(self, child: os.DirEntry[str], rel: PurePath) -> Iterator[_Entry | Rejected]:
        """The matching files of one directory entry: itself, or those under it."""
        path = Path(child.path)
        named_like_a_file = _has_suffix(child.name, self.suffixes)
        if child.is_symlink() and not _inside(path, self.real_root):
            if named_like_a_file:
                yield Rejected(_rel_id(rel), printable_name(str(path)), "outside_root",
                               f"symlink to {str(path.resolve())!r} leaves the corpus directory")
        elif _is_dir(child):
            if named_like_a_file and self.flag_dirs:
                yield Rejected(_rel_id(rel), printable_name(str(path)), "unreadable", "a directory, not a file")
            real = path.resolve()
            if real not in self.visited:
                self.visited.add(real)
                yield from self.entries(path, rel)
        elif named_like_a_file:
            yield _Entry(_rel_id(rel), path)


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (a symlink) resolves to somewhere inside ``real_root``."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether a directory entry is (or links to) a directory, ``False`` when that cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Text decoding, cleaning and segmentation


def _new_decoder() -> codecs.IncrementalDecoder:
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
    text, replaced = _SURROGATES.subn("\ufffd", text)
    stats.invalid_utf8_bytes += replaced
    return text


def _file_fragments(path: Path, block_size: int, stats: TextStats) -> Iterator[str]:
    """The cleaned text of a file, one decoded read block at a time."""
    decoder = _new_decoder()
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


def _is_blank(text: str) -> bool:
    """Whether ``text`` has nothing but whitespace and NULs."""
    return _NONBLANK.search(text) is None


# ---------------------------------------------------------------------------------------------
# Ids


def _claim_id(doc_id: str, source: str, seen: set[str]) -> Rejected | None:
    """Record ``doc_id`` as seen, or the rejection of a repeated one."""
    if doc_id in seen:
        return Rejected(doc_id, source, "duplicate_id",
                        f"id {doc_id!r} appeared earlier in this corpus; only its first occurrence is processed")
    seen.add(doc_id)
    return None


def _id_text(value: object) -> str | None:
    """A record's id as text (strings as they are, integers in decimal), ``None`` if unusable."""
    if isinstance(value, str) and value:
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _record_document(raw_id: object, text: object, source: str, id_field: str, text_field: str,
                     seen: set[str]) -> Item:
    """The document of one JSON Lines record or Parquet row, or why it is rejected."""
    if raw_id is None:
        return Rejected(source, source, "missing_field", f"no id: field {id_field!r} is missing or null")
    doc_id = _id_text(raw_id)
    if doc_id is None:
        return Rejected(source, source, "bad_id",
                        f"id field {id_field!r} must be a non-empty string or an integer, got {raw_id!r:.80}")
    duplicate = _claim_id(doc_id, source, seen)
    if duplicate is not None:
        return duplicate
    if text is None:
        return Rejected(doc_id, source, "missing_field", f"no text: field {text_field!r} is missing or null")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="surrogateescape")
    if not isinstance(text, str):
        return Rejected(doc_id, source, "not_text",
                        f"text field {text_field!r} must be a string, got {type(text).__name__}")
    if _is_blank(text):
        return Rejected(doc_id, source, "empty", "the text is empty or whitespace only")
    return Document.from_text(doc_id, text, source)


# ---------------------------------------------------------------------------------------------
# Text files


def _read_text_files(entries: Iterable[_Entry | Rejected], block_size: int, seen: set[str]) -> Iterator[Item]:
    """One document (or rejection) per text file."""
    for entry in entries:
        if isinstance(entry, Rejected):
            yield entry
            continue
        source = entry.source
        rejected = _claim_id(entry.rel, source, seen) or _probe_text_file(entry, block_size)
        yield rejected or Document(entry.rel, source,
                                   lambda stats, path=entry.path: _file_fragments(path, block_size, stats))


def _probe_text_file(entry: _Entry, block_size: int) -> Rejected | None:
    """Why a text file cannot be a document (unreadable, binary, blank), or ``None`` if it can.

    Reads only up to the first non-blank character, so a normal file costs one small read;
    a file is read through only when it is blank.
    """
    source = entry.source
    try:
        mode = os.stat(entry.path).st_mode
        if not stat.S_ISREG(mode):  # opening a FIFO or device could block or never end
            return Rejected(entry.rel, source, "unreadable", "not a regular file")
        with open(entry.path, "rb") as handle:
            decoder = _new_decoder()
            head = handle.read(SNIFF_BYTES)
            if not _is_blank(decoder.decode(head)):
                return _binary_rejection(entry, head)
            if _has_content(decoder, handle, block_size):
                return None
    except OSError as exc:
        return Rejected(entry.rel, source, "unreadable", f"cannot read: {exc}")
    return Rejected(entry.rel, source, "empty", "the file is empty or whitespace only")


def _binary_rejection(entry: _Entry, head: bytes) -> Rejected | None:
    """The rejection of a file whose start has too many bytes that real text never has.

    Only a start with some content is judged, so a file of NULs and whitespace counts as empty.
    """
    suspicious = len(_SUSPICIOUS.findall(head.decode("utf-8", errors="surrogateescape")))
    if suspicious <= BINARY_FRACTION * len(head):
        return None
    return Rejected(entry.rel, entry.source, "not_text",
                    f"{suspicious} of the first {len(head)} bytes are NUL, control or invalid UTF-8 bytes "
                    f"(more than {BINARY_FRACTION:.0%}): this looks like a binary or UTF-16 file; "
                    f"convert text to UTF-8")


def _has_content(decoder: codecs.IncrementalDecoder, handle: BinaryIO, block_size: int) -> bool:
    """Whether the rest of the file holds a non-blank character, reading until one is seen."""
    while block := handle.read(block_size):
        if not _is_blank(decoder.decode(block)):
            return True
    return not _is_blank(decoder.decode(b"", final=True))


# ---------------------------------------------------------------------------------------------
# JSON Lines


def _read_jsonl_files(entries: Iterable[_Entry | Rejected], id_field: str, text_field: str,
                      seen: set[str]) -> Iterator[Item]:
    """The records of each JSON Lines file, in file order."""
    decoder = json.JSONDecoder(strict=False)  # tolerate raw control characters inside strings
    for entry in entries:
        if isinstance(entry, Rejected):
            yield entry
        else:
            yield from _read_jsonl_file(entry, decoder, id_field, text_field, seen)


def _read_jsonl_file(entry: _Entry, decoder: json.JSONDecoder, id_field: str, text_field: str,
                     seen: set[str]) -> Iterator[Item]:
    """One item per non-blank line; a file failing mid-way (corrupt gzip) ends with a rejection."""
    name = entry.source
    lineno = 0
    try:
        with _open_jsonl(entry.path) as handle:
            for lineno, raw in enumerate(handle, 1):
                if raw.strip():
                    yield _jsonl_record(raw, f"{name}:{lineno}", decoder, id_field, text_field, seen)
    except (OSError, EOFError) as exc:
        where = f"{name}:{lineno + 1}"
        yield Rejected(where, where, "unreadable", f"cannot read the file from line {lineno + 1} on: {exc}")


def _open_jsonl(path: Path) -> BinaryIO:
    """A binary line iterator over a JSON Lines file, decompressing ``.gz`` files."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _jsonl_record(raw: bytes, source: str, decoder: json.JSONDecoder, id_field: str, text_field: str,
                  seen: set[str]) -> Item:
    """The document of one JSON line, or why it is rejected."""
    try:
        record = decoder.decode(raw.decode("utf-8", errors="surrogateescape"))
    except ValueError as exc:
        return Rejected(source, source, "bad_json", f"not valid JSON: {exc}")
    if not isinstance(record, dict):
        return Rejected(source, source, "not_object", f"expected a JSON object, got {type(record).__name__}")
    return _record_document(record.get(id_field), record.get(text_field), source, id_field, text_field, seen)


# ---------------------------------------------------------------------------------------------
# Parquet


def _check_parquet_columns(entries: Iterable[_Entry | Rejected], id_field: str,
                           text_field: str) -> list[_Entry | Rejected]:
    """The entries, after checking every file's schema (only footers are read).

    A missing column is a configuration mistake, so it raises before any document is read; a
    file whose footer cannot be read is an unreadable entry instead.
    """
    checked: list[_Entry | Rejected] = []
    for entry in entries:
        if isinstance(entry, _Entry):
            try:
                names = pq.read_schema(entry.path).names
            except (OSError, pa.ArrowException) as exc:
                entry = Rejected(entry.rel, entry.source, "unreadable", f"cannot read Parquet footer: {exc}")
            else:
                missing = [column for column in (id_field, text_field) if column not in names]
                if missing:
                    raise ValueError(f"Parquet file {entry.source!r} has no column(s) {missing}; its columns "
                                     f"are {names}: pass id_field=/text_field= naming the right ones")
        checked.append(entry)
    return checked


def _read_parquet_files(entries: Iterable[_Entry | Rejected], id_field: str, text_field: str,
                        seen: set[str]) -> Iterator[Item]:
    """The rows of each Parquet file, in file order."""
    for entry in entries:
        if isinstance(entry, Rejected):
            yield entry
        else:
            yield from _read_parquet_file(entry, id_field, text_field, seen)


def _read_parquet_file(entry: _Entry, id_field: str, text_field: str, seen: set[str]) -> Iterator[Item]:
    """One item per row, reading record batches of :data:`PARQUET_BATCH_ROWS` rows."""
    name = entry.source
    row = 0
    columns = list(dict.fromkeys((id_field, text_field)))
    try:
        with pq.ParquetFile(entry.path) as parquet:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                ids = batch.column(id_field).to_pylist()
                texts = batch.column(text_field).to_pylist()
                for raw_id, text in zip(ids, texts):
                    yield _record_document(raw_id, text, f"{name}:row {row}", id_field, text_field, seen)
                    row += 1
    except (OSError, pa.ArrowException) as exc:
        where = f"{name}:row {row}"
        yield Rejected(where, where, "unreadable", f"cannot read the file from row {row} on: {exc}")
