"""load_tokenizer: choosing the tokenizer kind from the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from docstream.tokenizer import WorldTokenizer, default_world_vocab_path, load_tokenizer

WORLD_LINES = "1 '\\x00' 1\n2 'a' 1\n3 b'\\xe4' 1\n4 'ab' 2\n5 ' \"q\" ' 5\n"


def test_world_txt_loads_as_world(tmp_path: Path) -> None:
    path = tmp_path / "small_vocab.txt"
    path.write_text(WORLD_LINES, encoding="utf-8")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, WorldTokenizer)
    assert loaded.encode("aab") == [2, 4]


def test_official_world_vocab_loads_as_world() -> None:
    pytest.importorskip("rwkv", reason="the official World vocab ships in 'rwkv'")
    loaded = load_tokenizer(default_world_vocab_path())
    assert isinstance(loaded, WorldTokenizer)
    assert loaded.vocab_size == 65530


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", "just some prose\nthat is not a vocabulary\n"),
        ("empty.txt", ""),
        ("vocab.bin", WORLD_LINES),
        ("merges", "a b\n"),
    ],
)
def test_unknown_format_is_rejected_naming_the_file(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"cannot tell which tokenizer '.*{name}' holds; expected .*\.json"):
        load_tokenizer(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer file not found: '.*absent.json'"):
        load_tokenizer(tmp_path / "absent.json")


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a regular file"):
        load_tokenizer(tmp_path)


def test_malformed_world_txt_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad_vocab.txt"
    path.write_text("1 'a' 1\n2 'b' 1\n3 'c' 1\n4 'd' 1\n5 'e' 1\n6 'f' 1\n7 'g' 1\n8 'h' 1\n9 'xy' 5\n")
    expected = r"bad_vocab.txt:9: stated byte length 5 but the literal 'xy' is 2 bytes"
    with pytest.raises(ValueError, match=expected):
        load_tokenizer(path)


def test_a_bare_name_of_a_bundled_vocabulary_loads_the_bundled_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no such file here: the name means docstream's copy
    loaded = load_tokenizer("rwkv_vocab_v20230424.txt")
    assert isinstance(loaded, WorldTokenizer) and loaded.vocab_size == 65530
    # a file of that name in the working directory is what the caller means
    (tmp_path / "rwkv_vocab_v20230424.txt").write_text(WORLD_LINES, encoding="utf-8")
    assert load_tokenizer("rwkv_vocab_v20230424.txt").vocab_size == 6
    # a path with a directory part is never redirected, and unknown bare names list what is bundled
    with pytest.raises(FileNotFoundError, match=r"'sub/rwkv_vocab_v20230424.txt'"):
        load_tokenizer("sub/rwkv_vocab_v20230424.txt")
    with pytest.raises(FileNotFoundError, match=r"'nope.txt'.*Bundled vocabularies.*rwkv_vocab_v20230424.txt"):
        load_tokenizer("nope.txt")
