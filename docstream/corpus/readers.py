"""Lazy corpus readers: text files, JSON Lines and Parquet, one document at a time.

A corpus can be far larger than memory and can hold hostile documents (invalid
UTF-8, NUL bytes, gigabyte lines, duplicate ids, unreadable files). The readers
here therefore never hold more than one document's text (text files: never more
than one *piece* of it) and never let one bad document stop a run: a bad
document becomes a :class:`Rejected` record with a machine-friendly reason, and
only configuration mistakes (missing input, unknown format, missing Parquet
columns) raise.
"""
from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from docstream.corpus.documents import (
    READ_BLOCK_SIZE,
    SURROGATES,
    Document,
    Item,
    Rejected,
    check_positive,
    file_fragments,
    is_blank,
    new_decoder,
)
from docstream.corpus.walk import FORMATS, Entry, list_entries, resolve_format

#: rows per Parquet record batch: small, because one row can be a whole book
PARQUET_BATCH_ROWS = 64


#: bytes at the start of a text file examined by the binary-file sniff
SNIFF_BYTES = 8 * 1024


#: a text file whose sniffed start has more than this fraction of suspicious bytes is "not_text"
BINARY_FRACTION = 0.3


#: code points that are never in real text: NUL, C0 controls other than whitespace and ESC, DEL,
#: and the lone surrogates U+DC80..U+DCFF that ``surrogateescape`` makes of invalid UTF-8 bytes
_SUSPICIOUS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f\udc80-\udcff]")


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
    check_positive("read_block_size", read_block_size)
    if not root.exists():
        raise FileNotFoundError(f"corpus path {str(root)!r} does not exist; pass a file or a directory")
    kind = resolve_format(root, fmt)
    entries = list_entries(root, kind)
    seen: set[str] = set()
    if kind == "text":
        return _read_text_files(entries, read_block_size, seen)
    if kind == "jsonl":
        return _read_jsonl_files(entries, id_field, text_field, seen)
    entries = _check_parquet_columns(entries, id_field, text_field)
    return _read_parquet_files(entries, id_field, text_field, seen)


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
        return SURROGATES.sub("\ufffd", value)
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
    if is_blank(text):
        return Rejected(doc_id, source, "empty", "the text is empty or whitespace only")
    return Document.from_text(doc_id, text, source)


def _read_text_files(entries: Iterable[Entry | Rejected], block_size: int, seen: set[str]) -> Iterator[Item]:
    """One document (or rejection) per text file."""
    for entry in entries:
        if isinstance(entry, Rejected):
            yield entry
            continue
        source = entry.source
        rejected = _claim_id(entry.rel, source, seen) or _probe_text_file(entry, block_size)
        yield rejected or Document(entry.rel, source,
                                   lambda stats, path=entry.path: file_fragments(path, block_size, stats))


def _probe_text_file(entry: Entry, block_size: int) -> Rejected | None:
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
            decoder = new_decoder()
            head = handle.read(SNIFF_BYTES)
            if not is_blank(decoder.decode(head)):
                return _binary_rejection(entry, head)
            if _has_content(decoder, handle, block_size):
                return None
    except OSError as exc:
        return Rejected(entry.rel, source, "unreadable", f"cannot read: {exc}")
    return Rejected(entry.rel, source, "empty", "the file is empty or whitespace only")


def _binary_rejection(entry: Entry, head: bytes) -> Rejected | None:
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
        if not is_blank(decoder.decode(block)):
            return True
    return not is_blank(decoder.decode(b"", final=True))


def _read_jsonl_files(entries: Iterable[Entry | Rejected], id_field: str, text_field: str,
                      seen: set[str]) -> Iterator[Item]:
    """The records of each JSON Lines file, in file order."""
    decoder = json.JSONDecoder(strict=False)  # tolerate raw control characters inside strings
    for entry in entries:
        if isinstance(entry, Rejected):
            yield entry
        else:
            yield from _read_jsonl_file(entry, decoder, id_field, text_field, seen)


def _read_jsonl_file(entry: Entry, decoder: json.JSONDecoder, id_field: str, text_field: str,
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


def _check_parquet_columns(entries: Iterable[Entry | Rejected], id_field: str,
                           text_field: str) -> list[Entry | Rejected]:
    """The entries, after checking every file's schema (only footers are read).

    A missing column is a configuration mistake, so it raises before any document is read; a
    file whose footer cannot be read is an unreadable entry instead.
    """
    checked: list[Entry | Rejected] = []
    for entry in entries:
        if isinstance(entry, Entry):
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


def _read_parquet_files(entries: Iterable[Entry | Rejected], id_field: str, text_field: str,
                        seen: set[str]) -> Iterator[Item]:
    """The rows of each Parquet file, in file order."""
    for entry in entries:
        if isinstance(entry, Rejected):
            yield entry
        else:
            yield from _read_parquet_file(entry, id_field, text_field, seen)


def _read_parquet_file(entry: Entry, id_field: str, text_field: str, seen: set[str]) -> Iterator[Item]:
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
