"""The built-in default model: it ships whole, within budget, loads without arguments, matches the
official rwkv package, and beats both baselines on held-out text, measured, near the card's number."""
import json
import re
from pathlib import Path

import pytest

from docstream.defaults import DEFAULT_MODEL_DIR, default_model_path, default_tokenizer_path
from docstream.demo import SAMPLE_CORPUS
from docstream.model import load_model
from docstream.tokenizer import load_tokenizer
from docstream.train.card import gzip_bits_per_byte, unigram_bits_per_byte
from docstream.train.loop import heldout_bits_per_byte
from tests.official import run_official

TEXT = "Full fathom five thy father lies;\nOf his bones are coral made."


@pytest.fixture(scope="module")
def model():
    return load_model(default_model_path())


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_tokenizer_path())


def test_the_model_tokenizer_and_embedder_ship_within_25_mb():
    from docstream.defaults import default_embedder_path

    embedder = default_embedder_path()
    files = [default_model_path(), default_tokenizer_path(), embedder, embedder.with_name("token_weights.npy")]
    assert sum(f.stat().st_size for f in files) <= 25 * 1000 * 1000
    for name in ("MODEL_CARD.md", "loss_curve.png", "heldout.json"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name


def test_it_loads_as_an_rwkv7_whose_vocabulary_fits_its_tokenizer(model, tokenizer):
    assert model.version == "7"
    assert model.config.vocab_size == tokenizer.vocab_size
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT


def test_official_package_gives_the_same_logits(model, tokenizer):
    ids = tokenizer.encode(TEXT)
    official = run_official(default_model_path(), "7", [ids])[0]
    logits, _ = model.forward(ids, all_logits=True)
    assert (logits[0] - official["all"]).abs().max().item() <= 1e-4


def _heldout_sample() -> bytes:
    """8 kB of each held-out play, from its middle (whole lines): 24 kB the model never trained on."""
    parts = []
    for play in sorted((SAMPLE_CORPUS / "plays").glob("*.txt")):
        raw = play.read_bytes()
        start = raw.index(b"\n", len(raw) // 2) + 1
        parts.append(raw[start:raw.index(b"\n", start + 8000)])
    return b"\n".join(parts)


@pytest.mark.usefixtures("one_thread")  # two threads on a busy 2-core machine take minutes, one takes seconds
def test_held_out_bits_per_byte_are_below_both_baselines_and_match_the_card(model, tokenizer):
    """Measured here on a 24 kB held-out sample (about 2 s): the model beats gzip -9 and the byte unigram
    entropy of that sample, and lands within 0.1 bits per byte of the card's number for the whole
    365 kB held-out set (samples of this size measured 2.04 to 2.08 against the card's 2.050)."""
    text = _heldout_sample()
    measured = heldout_bits_per_byte(model, tokenizer, text)
    assert measured < gzip_bits_per_byte(text) < unigram_bits_per_byte(text)
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    numbers = re.search(r"\| this model \| \*\*([0-9.]+)\*\* \|\n\| gzip -9 \| ([0-9.]+) \|", card)
    assert numbers, "MODEL_CARD.md has no held-out bits-per-byte table"
    card_model, card_gzip = float(numbers[1]), float(numbers[2])
    assert measured == pytest.approx(card_model, abs=0.1)
    assert measured < card_gzip
    # the card and heldout.json (which the slow test below reproduces in full) state the same number
    assert card_model == round(json.loads((DEFAULT_MODEL_DIR / "heldout.json").read_text())["model"], 3)


@pytest.mark.slow
def test_the_shipped_numbers_are_reproduced_by_measuring_again(model, tokenizer):
    plays = sorted((SAMPLE_CORPUS / "plays").glob("*.txt"))
    text = "\n".join(p.read_text(encoding="utf-8") for p in plays).encode()
    heldout = json.loads((DEFAULT_MODEL_DIR / "heldout.json").read_text())
    assert len(text) == heldout["bytes"]
    assert gzip_bits_per_byte(text) == pytest.approx(heldout["gzip"], abs=1e-9)
    bpb = heldout_bits_per_byte(model, tokenizer, text)
    assert bpb == pytest.approx(heldout["model"], abs=1e-4)


def test_the_built_in_embedder_loads_and_describes_itself(tokenizer):
    from docstream.defaults import default_embedder_path
    from docstream.model.embedding import read_embedder_spec, token_weights

    path = default_embedder_path()
    spec = read_embedder_spec(path)
    embedder = load_model(path)
    assert embedder.version == "7" and embedder.config.n_layer == 2 and spec.dimension == embedder.config.n_embd
    assert spec.pooling == "mean" and Path(spec.tokenizer) == default_tokenizer_path()
    weights = token_weights(spec, embedder.config.vocab_size)
    assert weights.shape == (tokenizer.vocab_size,) and 0 < weights.min() < weights.max() <= 1
    assert (path.parent / "MODEL_CARD.md").is_file()
