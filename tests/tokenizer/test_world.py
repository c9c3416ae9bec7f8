"""WorldTokenizer: identical ids to the reference rwkv TRIE_TOKENIZER, round trips, file validation."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import random
import string
import time
from pathlib import Path

import pytest

from docstream.tokenizer import (
    END_OF_TEXT_ID,
    WORLD_VOCAB_FILENAME,
    Tokenizer,
    WorldTokenizer,
    default_world_vocab_path,
    rwkv_package_vocab_path,
)

rwkv_tokenizer = pytest.importorskip("rwkv.rwkv_tokenizer", reason="the reference tokenizer ships in 'rwkv'")

MIXED_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 3.14159 — “quoted” text…\n\n"
    "中文：我们今天去公园散步，天气很好。繁體字也要測試。\n"
    "日本語：吾輩は猫である。名前はまだ無い。カタカナとひらがな。\n"
    "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.\n"
    "العربية: مرحبا بالعالم، كيف حالك؟\n"
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️\n"
    "def greet(name: str) -> str:\n\tif name:\n\t\treturn f'hi {name}!'\r\n\treturn \"\"\n"
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0360\u0324 \u1100\u1161\u11a8 (Hangul jamo)\n"
    "Mixed   spaces\u00a0nbsp\u3000ideographic\u200bzwsp\tend\x00\x7f\n"
)


@pytest.fixture(scope="module")
def vocab_path() -> Path:
    return default_world_vocab_path()


@pytest.fixture(scope="module")
def reference_vocab_path() -> Path:
    return rwkv_package_vocab_path()


@pytest.fixture(scope="module")
def world(vocab_path: Path) -> WorldTokenizer:
    return WorldTokenizer(vocab_path)


@pytest.fixture(scope="module")
def reference(reference_vocab_path: Path):
    """The reference tokenizer; the GC is paused while it builds its large trie (3x faster)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return rwkv_tokenizer.TRIE_TOKENIZER(str(reference_vocab_path))
    finally:
        if was_enabled:
            gc.enable()


@pytest.fixture(scope="module")
def vocab_texts(reference) -> list[str]:
    """The vocabulary's tokens as text (undecodable bytes dropped), to build tricky inputs."""
    texts = [token.decode("utf-8", errors="ignore") for token in reference.idx2token.values()]
    return [text for text in texts if text]


def random_code_point(rng: random.Random) -> str:
    """Any Unicode scalar value (no surrogates), biased towards the commonly used planes."""
    upper = rng.choice([0x7F, 0x7FF, 0xFFFF, 0x10FFFF])
    while True:
        value = rng.randint(0, upper)
        if not 0xD800 <= value <= 0xDFFF:
            return chr(value)


def random_text(rng: random.Random, vocab_texts: list[str]) -> str:
    """A random string mixing ASCII, arbitrary code points, vocabulary pieces and whitespace."""
    parts: list[str] = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.random()
        if kind < 0.3:
            alphabet = string.ascii_letters + string.digits + " .,;:!?'\"()[]{}<>-_=+*/\\"
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))))
        elif kind < 0.55:
            parts.append("".join(random_code_point(rng) for _ in range(rng.randint(1, 10))))
        elif kind < 0.85:
            piece = "".join(rng.choice(vocab_texts) for _ in range(rng.randint(1, 4)))
            parts.append(piece[: rng.randint(1, len(piece))])
        else:
            parts.append(rng.choice([" ", "  ", "\n", "\n\n", "\t", "\r\n", "\t\t", " \n "]))
    return "".join(parts)


def write_vocab(tmp_path: Path, lines: list[str], name: str = "vocab.txt") -> Path:
    """Write ``lines`` (newline-terminated) to a vocab file and return its path."""
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def byte_lines() -> list[str]:
    """Vocab lines for all 256 single bytes, in the official file's notation, ids 1..256."""
    lines = []
    for byte in range(256):
        literal = repr(chr(byte)) if byte < 128 else repr(bytes([byte]))
        lines.append(f"{byte + 1} {literal} 1")
    return lines


def test_satisfies_protocol_and_metadata(world: WorldTokenizer, vocab_path: Path) -> None:
    assert isinstance(world, Tokenizer)
    assert world.vocab_size == 65530
    assert world.name == f"world:{WORLD_VOCAB_FILENAME}"
    assert world.fingerprint() == hashlib.sha256(vocab_path.read_bytes()).hexdigest()
    assert world.eot_id == END_OF_TEXT_ID == 0


def test_matches_reference_on_multilingual_text(world: WorldTokenizer, reference) -> None:
    ids = world.encode(MIXED_TEXT)
    assert ids == reference.encode(MIXED_TEXT)
    assert world.decode(ids) == MIXED_TEXT
    assert len(ids) < len(MIXED_TEXT.encode("utf-8"))


def test_known_ids(world: WorldTokenizer) -> None:
    assert world.encode("") == []
    assert world.encode("\n\n") == [261]
    assert world.decode(world.encode("Hello world")) == "Hello world"


def test_matches_reference_on_random_texts(world: WorldTokenizer, reference, vocab_texts: list[str]) -> None:
    rng = random.Random(20230424)
    for _ in range(400):
        text = random_text(rng, vocab_texts)
        ids = world.encode(text)
        assert ids == reference.encode(text), repr(text)
        assert world.decode(ids) == text, repr(text)


def test_matches_reference_on_random_bytes(world: WorldTokenizer, reference) -> None:
    rng = random.Random(7)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        ids = world.encode_bytes(data)
        assert ids == reference.encodeBytes(data), data
        assert world.decode_bytes(ids) == data


def test_decode_handles_end_of_text_and_partial_utf8(world: WorldTokenizer) -> None:
    ids = world.encode("a😀b")
    assert world.decode([END_OF_TEXT_ID, *ids, END_OF_TEXT_ID]) == "a😀b"
    emoji_bytes = "😀".encode("utf-8")
    first_byte_id = world.encode_bytes(emoji_bytes[:1])
    assert world.decode(first_byte_id) == "\ufffd"
    assert world.decode_bytes(first_byte_id) == emoji_bytes[:1]
    with pytest.raises(UnicodeDecodeError):
        world.decode(first_byte_id, errors="strict")


@pytest.mark.parametrize("bad_id", [-1, 65530, 10**9])
def test_decode_rejects_unknown_ids(world: WorldTokenizer, bad_id: int) -> None:
    with pytest.raises(ValueError, match=rf"token id {bad_id} is not in world:"):
        world.decode([1, bad_id])


def test_encode_one_megabyte_is_fast(world: WorldTokenizer) -> None:
    data = (MIXED_TEXT.encode("utf-8") * (1_000_000 // len(MIXED_TEXT.encode("utf-8")) + 1))[:1_000_000]
    started = time.perf_counter()
    ids = world.encode_bytes(data)
    elapsed = time.perf_counter() - started
    assert world.decode_bytes(ids) == data
    assert elapsed < 5.0, f"encoding 1 MB took {elapsed:.2f}s"


def test_small_vocab_greedy_longest_match(tmp_path: Path) -> None:
    extra = ["257 'ab' 2", "258 'abcd' 4", "259 b'\\xe4\\xb8' 2", "260 '中文' 6", "261 'a b' 3"]
    path = write_vocab(tmp_path, byte_lines() + extra)
    ours = WorldTokenizer(path)
    reference = rwkv_tokenizer.TRIE_TOKENIZER(str(path))
    c, e = ord("c") + 1, ord("e") + 1
    assert ours.encode("abce") == [257, c, e]
    assert ours.encode("abcdab") == [258, 257]
    assert ours.encode("a b") == [261]
    assert ours.encode("a bc") == [261, c]
    for text in ["abce", "abcdab", "a b", "中文中", "中x", "", "ab a b abcd"]:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    assert ours.vocab_size == 262


def test_accepts_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(("\r\n".join(byte_lines() + ["", "257 'hi' 2"]) + "\r\n").encode("utf-8"))
    tokenizer = WorldTokenizer(path)
    assert tokenizer.encode("hi!") == [257, ord("!") + 1]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / WORLD_VOCAB_FILENAME
    with pytest.raises(FileNotFoundError, match="nope"):
        WorldTokenizer(missing)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        WorldTokenizer(tmp_path)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("257 'ab'", r"expected a line shaped '<id> <python str or bytes literal> <byte length>'"),
        ("257", r"expected a line shaped"),
        ("x7 'ab' 2", r"expected the token id to be a non-negative decimal integer, got 'x7'"),
        ("-3 'ab' 2", r"expected the token id to be a non-negative decimal integer, got '-3'"),
        ("0 'ab' 2", r"token id 0 is reserved for end-of-text"),
        ("257 'ab' 3", r"stated byte length 3 but the literal 'ab' is 2 bytes"),
        ("257 '中' 1", r"stated byte length 1 but the literal '中' is 3 bytes"),
        ("257 'ab' two", r"expected the byte length to be a non-negative decimal integer, got 'two'"),
        ("257 'ab 2", r"expected a Python str or bytes literal, got \"'ab\""),
        ("257 ab 2", r"expected a Python str or bytes literal, got 'ab'"),
        ("257 12 2", r"expected a Python str or bytes literal, got '12' \(a int\)"),
        ("257 __import__('os') 2", r"expected a Python str or bytes literal"),
        ("257 '' 0", r"empty token ''; expected at least one byte"),
        ("257 '\\ud800' 3", r"not encodable as UTF-8"),
        ("1 'ab' 2", r"token id 1 already defined on line 1"),
        ("257 'a' 1", r"token b'a' already defined on line 98"),
    ],
)
def test_malformed_line_names_file_line_and_expectation(tmp_path: Path, bad_line: str, expected: str) -> None:
    lines = [*byte_lines(), "300 'hello' 5", "301 'world' 5", bad_line, "302 'after' 5"]
    path = write_vocab(tmp_path, lines, name="broken_vocab.txt")
    with pytest.raises(ValueError, match=expected) as caught:
        WorldTokenizer(path)
    assert "broken_vocab.txt:259:" in str(caught.value)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"1 'a' 1\n2 'b' 1\n3 '\xe9' 1\n")
    with pytest.raises(ValueError, match=r"latin1.txt:3: invalid UTF-8"):
        WorldTokenizer(path)


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    path = write_vocab(tmp_path, ["", "  "], name="empty.txt")
    with pytest.raises(ValueError, match=r"empty.txt: no tokens found"):
        WorldTokenizer(path)


def test_unencodable_byte_is_reported(tmp_path: Path) -> None:
    path = write_vocab(tmp_path, ["1 'a' 1", "2 'bc' 2"])
    tokenizer = WorldTokenizer(path)
    assert tokenizer.encode("abca") == [1, 2, 1]
    with pytest.raises(ValueError, match=r"byte 0x62 at offset 1 starts no token"):
        tokenizer.encode("ab")
    with pytest.raises(ValueError, match=r"byte 0x7a at offset 0 starts no token"):
        tokenizer.encode("z")


def test_bundled_vocab_is_the_rwkv_package_file(vocab_path: Path, reference_vocab_path: Path) -> None:
    assert vocab_path.name == WORLD_VOCAB_FILENAME and vocab_path.parent.name == "data"
    assert reference_vocab_path.parent.name == "rwkv"
    assert vocab_path.read_bytes() == reference_vocab_path.read_bytes()


def test_rwkv_path_without_rwkv_explains_where_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install rwkv.*ChatRWKV and RWKV-LM"):
        rwkv_package_vocab_path()
