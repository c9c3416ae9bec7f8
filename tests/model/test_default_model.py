"""The built-in default model: it ships whole, within budget, loads without arguments, matches the
official rwkv package, and its card's held-out numbers beat both baselines."""
import json

import pytest

from docstream.defaults import DEFAULT_MODEL_DIR, default_model_path, default_tokenizer_path
from docstream.model import load_model
from docstream.tokenizer import load_tokenizer
from tests.official import run_official

TEXT = "Full fathom five thy father lies;\nOf his bones are coral made."


def test_the_model_and_tokenizer_ship_within_25_mb():
    files = [default_model_path(), default_tokenizer_path()]
    assert sum(f.stat().st_size for f in files) <= 25 * 1000 * 1000
    for name in ("MODEL_CARD.md", "loss_curve.png", "heldout.json"):
        assert (DEFAULT_MODEL_DIR / name).is_file(), name


def test_it_loads_as_an_rwkv7_whose_vocabulary_fits_its_tokenizer():
    model = load_model(default_model_path())
    tok = load_tokenizer(default_tokenizer_path())
    assert model.version == "7"
    assert model.config.vocab_size == tok.vocab_size
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_official_package_gives_the_same_logits():
    tok = load_tokenizer(default_tokenizer_path())
    ids = tok.encode(TEXT)
    model = load_model(default_model_path())
    official = run_official(default_model_path(), "7", [ids])[0]
    logits, _ = model.forward(ids, all_logits=True)
    assert (logits[0] - official["all"]).abs().max().item() <= 1e-4


def test_held_out_bits_per_byte_are_below_both_baselines():
    heldout = json.loads((DEFAULT_MODEL_DIR / "heldout.json").read_text())
    assert heldout["model"] < heldout["gzip"] < heldout["unigram"]
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert f"**{heldout['model']:.3f}**" in card


@pytest.mark.slow
def test_the_shipped_numbers_are_reproduced_by_measuring_again():
    from docstream.demo import SAMPLE_CORPUS
    from docstream.train.card import gzip_bits_per_byte
    from docstream.train.loop import heldout_bits_per_byte
    plays = sorted((SAMPLE_CORPUS / "plays").glob("*.txt"))
    text = "\n".join(p.read_text(encoding="utf-8") for p in plays).encode()
    heldout = json.loads((DEFAULT_MODEL_DIR / "heldout.json").read_text())
    assert len(text) == heldout["bytes"]
    assert gzip_bits_per_byte(text) == pytest.approx(heldout["gzip"], abs=1e-9)
    bpb = heldout_bits_per_byte(load_model(default_model_path()), load_tokenizer(default_tokenizer_path()), text)
    assert bpb == pytest.approx(heldout["model"], abs=1e-4)
