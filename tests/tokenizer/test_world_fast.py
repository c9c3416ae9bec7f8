"""WorldTokenizer's compiled encoder (pyrwkv-tokenizer) gives exactly the Python trie's ids, and the
Python trie takes over where the compiled one does not apply."""

from __future__ import annotations

import hashlib
import pickle
import random
import sys
from pathlib import Path

import pytest

import docstream
from docstream.tokenizer import WorldTokenizer, default_world_vocab_path, parse_world_vocab
from docstream.tokenizer.world_fast import WORLD_VOCAB_SHA256

SAMPLE_CORPUS = Path(docstream.__file__).resolve().parent / "data" / "sample_corpus"

MIXED_PARTS = [
    "Plain English, with punctuation: it's 3.14159 — “quoted” (parens) [brackets] {braces}…",
    "中文：我们今天去公园散步。繁體字測試。日本語：吾輩は猫である。カタカナ。한국어 텍스트입니다.",
    "Emoji: 😀🎉 👍🏻👍🏼👍🏽👍🏾👍🏿 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🇯🇵🇫🇷 ❤️ 1️⃣ 🫶🏿",
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0360\u0324\u0489 \u1100\u1161\u11a8 o\u0338 \u0915\u094d\u0937",
    "RTL: العربية مرحبا بالعالم، كيف حالك؟ עברית שלום עולם \u200fmark\u200e ܐܪܡܝܐ ދިވެހި",
    "Math: ∀x∈ℝ, ∑ᵢ xᵢ² ≤ ∫₀^∞ e^{−t} dt ≠ √2 ⊗ ∮ 𝔸𝕏𝒵𝟘𝟡 ⟨ψ|φ⟩ ℵ₀",
    "Controls: \x00\x01\x02\x07\x08\x0b\x0c\x0e\x1b[31m\x1f\x7f \x80\x85\x9f NUL\x00NUL",
    "Line ends: a\r\nb\rc\nd\r\n\r\n\n\n\u2028\u2029\x85end",
    "Spaces: " + " " * 257 + "|" + "\t" * 129 + "|" + " \t" * 64 + "|\u00a0\u3000\u2003\u200b\ufeff",
    "Long words: " + "a" * 5000 + " " + "supercalifragilistic" * 300 + " " + "的" * 2000 + " " + "😀" * 500,
    "Odd code points: \ufffd\ufffe\uffff\U0001ffff\U0010ffff\ue000\U000f0000 \U00020000\U0002a6d6",
]
MIXED_TEXT = "\n".join(MIXED_PARTS)


@pytest.fixture(scope="module")
def vocab_path() -> Path:
    return default_world_vocab_path()


@pytest.fixture(scope="module")
def trie(vocab_path: Path) -> WorldTokenizer:
    return WorldTokenizer(vocab_path, backend="python")


@pytest.fixture(scope="module")
def compiled(vocab_path: Path) -> WorldTokenizer:
    pytest.importorskip("pyrwkv_tokenizer", reason="the compiled World encoder is the 'pyrwkv-tokenizer' package")
    tok = WorldTokenizer(vocab_path, backend="rust")
    assert tok.backend == "rust"
    return tok


def random_unicode(rng: random.Random, length: int) -> str:
    """Code points from every plane (surrogates excluded), weighted towards the ones text uses."""
    chars = []
    for _ in range(length):
        pick = rng.random()
        if pick < 0.3:
            code = rng.randint(0x20, 0x7E)
        elif pick < 0.4:
            code = ord(rng.choice(" \t\n\r\x00"))
        elif pick < 0.6:
            code = rng.randint(0x80, 0x7FF)
        elif pick < 0.8:
            code = rng.choice([rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0xFFFF)])
        else:
            code = rng.randint(0x10000, 0x10FFFF)
        chars.append(chr(code))
    return "".join(chars)


def test_the_package_ships_the_same_world_vocabulary(vocab_path: Path) -> None:
    package = pytest.importorskip("pyrwkv_tokenizer")
    shipped = Path(package.__file__).parent / vocab_path.name
    shipped_bytes = shipped.read_bytes()
    assert hashlib.sha256(shipped_bytes).hexdigest() in WORLD_VOCAB_SHA256
    assert hashlib.sha256(vocab_path.read_bytes()).hexdigest() in WORLD_VOCAB_SHA256
    assert parse_world_vocab(shipped_bytes, str(shipped)) == parse_world_vocab(vocab_path.read_bytes(), "bundled")
    assert WorldTokenizer(shipped).backend == "rust"


def test_auto_uses_the_compiled_encoder(vocab_path: Path, compiled: WorldTokenizer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tok = WorldTokenizer(vocab_path)
    assert tok.backend == "rust"

    def no_trie(data: bytes) -> list[int]:
        raise AssertionError("the Python trie ran for valid UTF-8 input")

    monkeypatch.setattr(tok, "_encode_trie", no_trie)
    assert tok.encode(MIXED_TEXT) == compiled.encode(MIXED_TEXT)
    assert tok.encode_bytes(MIXED_TEXT.encode()) == compiled.encode(MIXED_TEXT)


def test_mixed_unicode_identical(trie: WorldTokenizer, compiled: WorldTokenizer) -> None:
    for part in MIXED_PARTS:
        assert compiled.encode(part) == trie.encode(part), part[:40]
    ids = compiled.encode(MIXED_TEXT)
    assert ids == trie.encode(MIXED_TEXT)
    assert compiled.decode(ids) == MIXED_TEXT


def test_random_unicode_identical(trie: WorldTokenizer, compiled: WorldTokenizer) -> None:
    rng = random.Random(20230424)
    texts = [random_unicode(rng, rng.randint(0, 60)) for _ in range(4000)]
    texts += [random_unicode(rng, rng.randint(500, 3000)) for _ in range(20)]
    for text in texts:
        ids = compiled.encode(text)
        assert ids == trie.encode(text), ascii(text[:60])
        assert compiled.decode(ids) == text


def test_texts_cut_anywhere_identical(trie: WorldTokenizer, compiled: WorldTokenizer) -> None:
    text = "\n".join(part[:300] for part in MIXED_PARTS)
    for cut in range(len(text) + 1):
        for piece in (text[:cut], text[cut:], text[cut : cut + 7]):
            assert compiled.encode(piece) == trie.encode(piece), (cut, ascii(piece[:40]))


def test_bytes_cut_anywhere_identical(trie: WorldTokenizer, compiled: WorldTokenizer) -> None:
    """Cuts inside a character leave invalid UTF-8, which the trie encodes; whole ones go compiled."""
    data = "\n".join(part[:120] for part in MIXED_PARTS).encode("utf-8")
    for cut in range(len(data) + 1):
        for piece in (data[:cut], data[cut:], data[cut : cut + 5]):
            ids = compiled.encode_bytes(piece)
            assert ids == trie.encode_bytes(piece), (cut, piece[:20])
            assert compiled.decode_bytes(ids) == piece


def test_invalid_utf8_bytes_identical(trie: WorldTokenizer, compiled: WorldTokenizer) -> None:
    rng = random.Random(7)
    samples = [b"\xff\xfe\x80abc\xe4\xb8", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong", b"\xf4\x90\x80\x80",
               bytearray(b"caf\xc3\xa9 \xc3"), bytes(range(256)) * 3]
    samples += [rng.randbytes(rng.randint(1, 200)) for _ in range(500)]
    for data in samples:
        ids = compiled.encode_bytes(data)
        assert ids == trie.encode_bytes(data), data[:20]
        assert compiled.decode_bytes(ids) == bytes(data)
    assert compiled.decode(compiled.encode_bytes(b"ok \xff")) == "ok \ufffd"


def test_sample_corpus_identical(trie: WorldTokenizer, compiled: WorldTokenizer) -> None:
    files = sorted(f for f in SAMPLE_CORPUS.rglob("*") if f.is_file() and f.suffix in (".txt", ".md"))
    assert len(files) >= 5, f"expected the bundled sample corpus in {SAMPLE_CORPUS}"
    for file in files:
        text = file.read_text(encoding="utf-8")
        ids = compiled.encode(text)
        assert ids == trie.encode(text), file.name
        assert compiled.decode(ids) == text
        assert compiled.encode_bytes(file.read_bytes()) == trie.encode_bytes(file.read_bytes()), file.name


def test_inputs_the_compiled_encoder_cannot_take_behave_as_before(compiled: WorldTokenizer,
                                                                  trie: WorldTokenizer) -> None:
    for text in ("a\ud800b", "\udfff", "ok" * 100 + "\udc80"):
        with pytest.raises(UnicodeEncodeError) as from_compiled:
            compiled.encode(text)
        with pytest.raises(UnicodeEncodeError) as from_trie:
            trie.encode(text)
        assert str(from_compiled.value) == str(from_trie.value)
    with pytest.raises(AttributeError):  # not a str: as before, str.encode is what fails
        compiled.encode(b"bytes")  # type: ignore[arg-type]
    assert compiled.encode("") == [] == compiled.encode_bytes(b"")
    assert compiled.encode_bytes(memoryview(b"hello")) == trie.encode_bytes(b"hello")


def test_other_vocabularies_use_the_python_trie(tmp_path: Path, vocab_path: Path) -> None:
    lines = vocab_path.read_bytes().split(b"\n")
    edited = tmp_path / "edited_vocab.txt"
    edited.write_bytes(b"\n".join(lines[:-3]))  # the World vocabulary less its last tokens
    assert WorldTokenizer(edited).backend == "python"
    with pytest.raises(ValueError, match="edited_vocab.txt.*backend='auto' or 'python'"):
        WorldTokenizer(edited, backend="rust")
    with pytest.raises(ValueError, match="unknown tokenizer backend 'cuda'"):
        WorldTokenizer(vocab_path, backend="cuda")
    assert WorldTokenizer(vocab_path, backend="python").backend == "python"


def test_without_the_package_the_python_trie_is_used(vocab_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyrwkv_tokenizer", None)  # makes `import pyrwkv_tokenizer` fail
    tok = WorldTokenizer(vocab_path)
    assert tok.backend == "python"
    assert tok.encode("Hello world") == [33155, 40213]
    with pytest.raises(ImportError, match="pip install pyrwkv-tokenizer"):
        WorldTokenizer(vocab_path, backend="rust")


def test_pickles(compiled: WorldTokenizer) -> None:
    copy = pickle.loads(pickle.dumps(compiled))
    assert copy.backend == "rust"
    assert copy.encode(MIXED_TEXT) == compiled.encode(MIXED_TEXT)
