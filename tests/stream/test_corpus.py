"""Corpus readers: walk order and ids, JSON Lines, Parquet, hostile documents, piece segmentation."""

from __future__ import annotations

import builtins
import gzip
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docstream.corpus import (
    MAX_PIECE_CHARS,
    MIN_PIECE_CHARS,
    READ_BLOCK_SIZE,
    Document,
    Rejected,
    TextStats,
    iter_corpus,
    printable_name,
)


def write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path``, creating its directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def items(path: Path, **kwargs) -> list[Document | Rejected]:
    return list(iter_corpus(path, **kwargs))


def texts(found: list[Document | Rejected]) -> dict[str, str]:
    """The full text of every document, by id."""
    return {item.doc_id: "".join(item.pieces()) for item in found if isinstance(item, Document)}


def rejections(found: list[Document | Rejected]) -> dict[str, str]:
    """The reason of every rejection, by id."""
    return {item.doc_id: item.reason for item in found if isinstance(item, Rejected)}


def read(doc: Document, **kwargs) -> tuple[list[str], TextStats]:
    stats = TextStats()
    return list(doc.pieces(stats, **kwargs)), stats


def single(path: Path, **kwargs) -> Document | Rejected:
    (item,) = items(path, **kwargs)
    return item


# --- directories and single text files ----------------------------------------------------------


def test_directory_walk_is_sorted_recursive_and_ids_are_relative_posix_paths(tmp_path: Path) -> None:
    for rel in ["b.txt", "a/z.md", "a/b/c.TXT", "a.txt", "notes.Md", "image.png", "data.jsonl", "a/b/readme"]:
        write(tmp_path / rel, f"text of {rel}\n")
    found = items(tmp_path)
    assert all(isinstance(item, Document) for item in found)
    assert [item.doc_id for item in found] == ["a/b/c.TXT", "a/z.md", "a.txt", "b.txt", "notes.Md"]
    assert found[0].source == str(tmp_path / "a" / "b" / "c.TXT")
    assert texts(found)["a/z.md"] == "text of a/z.md\n"
    assert [item.doc_id for item in items(tmp_path, fmt="text")] == [item.doc_id for item in found]


def test_single_text_file_has_its_name_as_id(tmp_path: Path) -> None:
    path = write(tmp_path / "sub" / "book.txt", "Call me Ishmael.\n")
    item = single(path)
    assert isinstance(item, Document) and item.doc_id == "book.txt" and item.source == str(path)
    assert "".join(item.pieces()) == "Call me Ishmael.\n"


def test_explicit_text_format_accepts_any_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "server.log", "line\n")
    assert texts(items(path, fmt="text")) == {"server.log": "line\n"}


def test_pieces_start_over_on_every_call(tmp_path: Path) -> None:
    doc = single(write(tmp_path / "a.txt", "x" * 100 + "\n" + "y" * 50))
    assert list(doc.pieces(min_piece_chars=10)) == list(doc.pieces(min_piece_chars=10))
    assert len(list(doc.pieces(min_piece_chars=10))) == 2


def _unescape(name: str) -> bytes:
    """The file-name bytes that :func:`printable_name` escaped into ``name`` (the inverse mapping)."""
    out, i = bytearray(), 0
    while i < len(name):
        if name[i] != "\\":
            out += name[i].encode()
            i += 1
        elif name[i + 1] == "\\":
            out += b"\\"
            i += 2
        elif name[i + 1] == "x":
            out.append(int(name[i + 2:i + 4], 16))
            i += 4
        else:  # \uNNNN: a lone surrogate that is no escaped byte
            out += chr(int(name[i + 2:i + 6], 16)).encode("utf-8", "surrogatepass")
            i += 6
    return bytes(out)


def test_printable_name_is_lossless_and_one_to_one() -> None:
    names = ["a.txt", "doc03\udcff.txt", "doc03\\xff.txt", "doc03\\\\xff.txt", "doc03\\\udcff.txt",
             "tab\there\n.txt", "x\\x09y", "\udc80\udcc3\udca9", "\u00e9t\u00e9.md", "dir/sub\udcfe/a.txt"]
    escaped = [printable_name(name) for name in names]
    assert len(set(escaped)) == len(names)
    for name, text in zip(names, escaped):
        text.encode("utf-8")  # no surrogate left
        assert text.isprintable() or "/" in text
        assert _unescape(text) == os.fsencode(name)
    assert printable_name("doc03\udcff.txt") == "doc03\\xff.txt"
    assert printable_name("doc03\\xff.txt") == "doc03\\\\xff.txt"
    assert printable_name("plain/été.md") == "plain/été.md"


def test_file_names_that_are_not_utf8_give_printable_ids_and_never_stop_the_corpus(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    names = [b"doc01.txt", b"doc02.txt", b"doc03\xff.txt", b"doc03\\xff.txt", b"doc04.txt", b"sub\xfe/doc05.txt"]
    for number, name in enumerate(names):
        path = root + b"/" + name
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(b"text %d\n" % number)
        except (OSError, UnicodeError):
            pytest.skip("this file system refuses file names that are not UTF-8")
    found = items(tmp_path)
    assert all(isinstance(item, Document) for item in found)
    ids = [item.doc_id for item in found]
    assert len(set(ids)) == len(names)
    assert sorted(_unescape(doc_id) for doc_id in ids) == sorted(names)
    assert "doc03\\xff.txt" in ids and "doc03\\\\xff.txt" in ids and "sub\\xfe/doc05.txt" in ids
    for item in found:
        item.doc_id.encode("utf-8")
        item.source.encode("utf-8")
        assert _unescape(item.source).endswith(_unescape(item.doc_id))
        assert "".join(item.pieces()) == f"text {names.index(_unescape(item.doc_id))}\n"
    # what the run writes: a Parquet table and JSON of the ids and sources
    table = pa.table({"doc_id": ids, "source": [item.source for item in found]})
    pq.write_table(table, tmp_path.parent / f"{tmp_path.name}-ids.parquet")
    json.dumps(ids, ensure_ascii=False).encode("utf-8")


def test_symlinks_leaving_the_root_are_not_followed(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "secret.txt", "secret\n")
    root = tmp_path / "corpus"
    write(root / "a.txt", "a\n")
    (root / "link_out.txt").symlink_to(outside)
    (root / "dir_out").symlink_to(outside.parent, target_is_directory=True)
    (root / "link_in.txt").symlink_to(root / "a.txt")
    (root / "loop").symlink_to(root, target_is_directory=True)
    found = items(root)
    assert texts(found) == {"a.txt": "a\n", "link_in.txt": "a\n"}
    assert rejections(found) == {"link_out.txt": "outside_root"}


# --- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_custom_fields_int_ids_blank_lines_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"key": "first", "body": "hello"}),
        "",
        "   ",
        json.dumps({"key": 7, "body": "seven"}),
        '{"key": "broken", "body": ',
        json.dumps({"body": "no id"}),
        json.dumps({"key": "no-text"}),
        json.dumps({"key": "number", "body": 3}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"key": True, "body": "bool id"}),
        json.dumps({"key": "last", "body": "bye", "extra": 1}),
    ]
    path = write(tmp_path / "data.jsonl", "\n".join(lines) + "\n")
    found = items(path, id_field="key", text_field="body")
    assert texts(found) == {"first": "hello", "7": "seven", "last": "bye"}
    by_source = {item.source: item for item in found if isinstance(item, Rejected)}
    name = str(path)
    assert {source: item.reason for source, item in by_source.items()} == {
        f"{name}:5": "bad_json",
        f"{name}:6": "missing_field",
        f"{name}:7": "missing_field",
        f"{name}:8": "not_text",
        f"{name}:9": "not_object",
        f"{name}:10": "bad_id",
    }
    assert by_source[f"{name}:5"].doc_id == f"{name}:5"  # no id could be read
    assert by_source[f"{name}:7"].doc_id == "no-text"
    assert next(item for item in found if isinstance(item, Document) and item.doc_id == "7").source == f"{name}:4"


def test_jsonl_gz_is_read(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "a", "text": "zipped"}) + "\n")
    assert texts(items(path)) == {"a": "zipped"}


def test_corrupt_jsonl_gz_ends_with_an_unreadable_rejection(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(json.dumps({"id": i, "text": "t" * 100}).encode() + b"\n" for i in range(500)))
    path = write(tmp_path / "data.jsonl.gz", data[: len(data) // 2])
    found = items(path)
    assert sum(isinstance(item, Document) for item in found) > 100
    assert isinstance(found[-1], Rejected) and found[-1].reason == "unreadable"


def test_duplicate_ids_keep_the_first_occurrence(tmp_path: Path) -> None:
    rows = [("a", "one"), ("b", "two"), ("a", "three"), ("1", "four"), (1, "five"), ("b", "   ")]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))
    found = items(path)
    assert [(item.doc_id, getattr(item, "reason", "ok")) for item in found] == [
        ("a", "ok"), ("b", "ok"), ("a", "duplicate_id"), ("1", "ok"), ("1", "duplicate_id"), ("b", "duplicate_id"),
    ]
    assert texts(found) == {"a": "one", "b": "two", "1": "four"}


def test_jsonl_text_repairs_are_counted(tmp_path: Path) -> None:
    raw = b'{"id": "x", "text": "caf\xe9 \\u0000 ok \\ud800"}\n'
    doc = single(write(tmp_path / "r.jsonl", raw))
    pieces, stats = read(doc)
    assert "".join(pieces) == "caf\ufffd  ok \ufffd"
    assert stats == TextStats(invalid_utf8_bytes=2, nul_chars=1)


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_custom_columns_across_row_groups_and_batches(tmp_path: Path) -> None:
    count = 300  # several record batches of 64 rows, in row groups of 50
    table = pa.table({
        "doc": [f"d{i:03d}" for i in range(count)],
        "content": [f"text number {i}" for i in range(count)],
        "other": list(range(count)),
    })
    path = tmp_path / "c.parquet"
    pq.write_table(table, path, row_group_size=50)
    assert pq.ParquetFile(path).num_row_groups == 6
    found = items(path, id_field="doc", text_field="content")
    assert [item.doc_id for item in found] == [f"d{i:03d}" for i in range(count)]
    assert texts(found)["d123"] == "text number 123"
    assert found[123].source == f"{path}:row 123"


def test_parquet_int_ids_nulls_empty_and_binary_text(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({
        "id": pa.array([1, 2, None, 4, 5], pa.int64()),
        "text": pa.array([b"one", None, b"three", b"  \n", b"bad \xff byte"], pa.binary()),
    }), path)
    found = items(path)
    assert texts(found) == {"1": "one", "5": "bad \ufffd byte"}
    assert [getattr(item, "reason", "ok") for item in found] == ["ok", "missing_field", "missing_field", "empty", "ok"]


def test_parquet_directory_with_explicit_format(tmp_path: Path) -> None:
    for name, ids in [("b.parquet", ["b1"]), ("a/x.parquet", ["a1", "a2"])]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "text": ["t"] * len(ids)}), tmp_path / name)
    write(tmp_path / "ignored.txt", "not parquet\n")
    assert [item.doc_id for item in items(tmp_path, fmt="parquet")] == ["a1", "a2", "b1"]


def test_parquet_missing_column_raises_up_front(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), path)
    with pytest.raises(ValueError, match=r"no column\(s\) \['text'\].*'id', 'body'"):
        iter_corpus(path)


# --- configuration errors -----------------------------------------------------------------------


def test_missing_path_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        iter_corpus(missing)


def test_unknown_format_raises_naming_value_and_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'csv'.*'auto', 'text', 'jsonl', 'parquet'"):
        iter_corpus(tmp_path, fmt="csv")


def test_unknown_suffix_with_auto_format_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot tell the format"):
        iter_corpus(write(tmp_path / "data.csv", "a,b\n"))


# --- hostile text files -------------------------------------------------------------------------


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    doc = single(write(tmp_path / "bad.txt", b"ok \xff\xfe then \xe2\x82 cut \xc3\xa9t\xc3\xa9\n"))
    pieces, stats = read(doc)
    assert "".join(pieces) == "ok \ufffd\ufffd then \ufffd\ufffd cut \u00e9t\u00e9\n"
    assert stats == TextStats(invalid_utf8_bytes=4, nul_chars=0)


def test_utf8_character_split_across_the_read_block_is_decoded(tmp_path: Path) -> None:
    emoji = "\U0001f600".encode()
    data = b"a" * (READ_BLOCK_SIZE - 2) + emoji + "\u00e9 end\n".encode()
    doc = single(write(tmp_path / "split.txt", data))
    pieces, stats = read(doc)
    assert "".join(pieces) == data.decode()
    assert stats == TextStats()


def test_leading_bom_is_dropped(tmp_path: Path) -> None:
    doc = single(write(tmp_path / "bom.txt", "\ufeffhello\n"))
    assert "".join(doc.pieces()) == "hello\n"


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  ", b"\x00\n\x00 ", b"\xef\xbb\xbf \n"])
def test_empty_and_whitespace_only_files_are_rejected(tmp_path: Path, content: bytes) -> None:
    item = single(write(tmp_path / "e.txt", content))
    assert isinstance(item, Rejected) and item.reason == "empty" and item.doc_id == "e.txt"


def test_blank_start_then_text_is_not_empty(tmp_path: Path) -> None:
    doc = single(write(tmp_path / "late.txt", " " * (3 * READ_BLOCK_SIZE) + "x"), read_block_size=4096)
    assert isinstance(doc, Document)
    assert "".join(doc.pieces()).strip() == "x"


def test_empty_jsonl_text_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", json.dumps({"id": "e", "text": " \n "}) + "\n")
    assert rejections(items(path)) == {"e": "empty"}


def test_nul_bytes_are_removed_and_counted_and_the_document_kept(tmp_path: Path) -> None:
    doc = single(write(tmp_path / "nul.txt", b"some\x00 real text\x00 with a few stray NULs\x00\n"))
    assert isinstance(doc, Document)
    pieces, stats = read(doc)
    assert "".join(pieces) == "some real text with a few stray NULs\n"
    assert stats == TextStats(invalid_utf8_bytes=0, nul_chars=3)


@pytest.mark.parametrize("content", [
    bytes(random.Random(0).randrange(256) for _ in range(20000)),
    "UTF-16 text is not UTF-8\n".encode("utf-16"),
    b"\x7fELF\x02\x01\x01" + b"\x00" * 64 + b"binary",
])
def test_binary_files_are_not_text(tmp_path: Path, content: bytes) -> None:
    item = single(write(tmp_path / "blob.txt", content))
    assert isinstance(item, Rejected) and item.reason == "not_text"


def test_very_long_single_line_gives_bounded_pieces(tmp_path: Path) -> None:
    line = ("word " * 200_000 + "x" * 1_000_000).encode()  # 2 MB, no newline, a 1 MB run without spaces
    doc = single(write(tmp_path / "long.txt", line))
    pieces, _ = read(doc)
    assert "".join(pieces) == line.decode()
    assert max(map(len, pieces)) <= MAX_PIECE_CHARS
    assert all(len(piece) >= MIN_PIECE_CHARS for piece in pieces[:-1])
    cut_at_space = [piece for piece in pieces if "word" in piece and piece != pieces[-1]]
    assert cut_at_space and all(piece.endswith(" ") for piece in cut_at_space[:-1])
    assert sum(len(piece) == MAX_PIECE_CHARS and piece[-1] == "x" for piece in pieces) >= 3  # hard cuts


def test_unreadable_entries_are_rejected(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "fine\n")
    write(tmp_path / "dir.txt" / "inner.txt", "inside\n")  # a directory named like a document
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    os.mkfifo(tmp_path / "fifo.txt")  # opening it would block: must be rejected without opening
    found = items(tmp_path)
    assert texts(found) == {"dir.txt/inner.txt": "inside\n", "good.txt": "fine\n"}
    assert rejections(found) == {"dangling.txt": "unreadable", "dir.txt": "unreadable", "fifo.txt": "unreadable"}


def test_parquet_directory_named_like_a_file_is_walked_silently(tmp_path: Path) -> None:
    dataset = tmp_path / "table.parquet"  # as Spark writes them
    dataset.mkdir()
    pq.write_table(pa.table({"id": ["p"], "text": ["part"]}), dataset / "part-0.parquet")
    assert [(item.doc_id, type(item).__name__) for item in items(tmp_path, fmt="parquet")] == [("p", "Document")]


def test_permission_denied_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = write(tmp_path / "locked.txt", "secret\n")
    write(tmp_path / "open.txt", "public\n")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    found = items(tmp_path)
    assert texts(found) == {"open.txt": "public\n"}
    (rejected,) = [item for item in found if isinstance(item, Rejected)]
    assert rejected.reason == "unreadable" and "Permission denied" in rejected.detail


def test_file_vanishing_after_listing_raises_os_error_when_read(tmp_path: Path) -> None:
    path = write(tmp_path / "v.txt", "here\n")
    doc = single(path)
    path.unlink()
    with pytest.raises(OSError):
        list(doc.pieces())


# --- piece segmentation -------------------------------------------------------------------------


def mixed_text(seed: int, size: int) -> str:
    """Random text with short and long lines, multi-byte characters and runs without spaces."""
    rng = random.Random(seed)
    words = ["a", "bb", "ccc", "é", "中文", "😀", "\t", "word", "x" * 300, " " * 3]
    parts: list[str] = []
    length = 0
    while length < size:
        part = rng.choice(words) + rng.choice([" ", " ", "", "\n", "\n\n"])
        if rng.random() < 0.01:
            part = "y" * rng.randrange(500, 3000)
        parts.append(part)
        length += len(part)
    return "".join(parts)


@pytest.mark.parametrize("block_size", [7, 4096, 65536])
def test_pieces_do_not_depend_on_the_read_block_size(tmp_path: Path, block_size: int) -> None:
    text = mixed_text(1, 60_000)
    path = write(tmp_path / "m.txt", text)
    limits = dict(min_piece_chars=500, max_piece_chars=2000)
    reference = list(Document.from_text("m.txt", text).pieces(**limits))
    doc = single(path, read_block_size=block_size)
    pieces, stats = read(doc, **limits)
    assert pieces == reference
    assert "".join(pieces) == text and stats == TextStats()
    assert len(pieces) > 20 and all(500 <= len(piece) <= 2000 for piece in pieces[:-1])
    assert Document.from_file(path, read_block_size=block_size).doc_id == "m.txt"
    assert list(Document.from_file(path, read_block_size=block_size).pieces(**limits)) == reference


def test_piece_rule_on_a_small_example() -> None:
    doc = Document.from_text("t", "ab\ncdef\ng\nhijklmnopq rs tuvwxyz\n")
    assert list(doc.pieces(min_piece_chars=4, max_piece_chars=8)) == [
        "ab\ncdef\n", "g\nhijklm", "nopq rs ", "tuvwxyz\n",
    ]


def test_default_piece_limits_on_a_large_text() -> None:
    text = mixed_text(2, 600_000)
    pieces = list(Document.from_text("big", text).pieces())
    assert "".join(pieces) == text
    assert all(MIN_PIECE_CHARS <= len(piece) <= MAX_PIECE_CHARS for piece in pieces[:-1])
    assert all(piece.endswith("\n") for piece in pieces[:-1])


@pytest.mark.parametrize("limits", [dict(min_piece_chars=0), dict(min_piece_chars=10, max_piece_chars=9)])
def test_bad_piece_limits_raise(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="min_piece_chars"):
        Document.from_text("t", "text").pieces(**limits)


def test_bad_read_block_size_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="read_block_size"):
        iter_corpus(tmp_path, read_block_size=0)
