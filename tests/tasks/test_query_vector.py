"""Query vectors in numpy equal the torch embedder's pooled hidden states, and need no torch."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from docstream.model import load_model
from docstream.model.embedding import EmbedderSpec, embed_tokens
from docstream.tasks.query_vector import QueryEncoder
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.tokenizer import load_tokenizer
from tests.helpers import imported_by

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DIR = ROOT / "docstream" / "data" / "default_model"
BUILTIN = BUILTIN_DIR / "model.pth"
TOL = 1e-4  # fp32, relative to the vectors' largest magnitude
TEXTS = ["serialize an object to a JSON formatted string", "a ghost walks on the castle platform at midnight",
         "x", "parse command line options and arguments " * 3]

pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(pooling: str, **kw) -> EmbedderSpec:
    return EmbedderSpec(**{"pooling": pooling, "eos_token": 0, "tokenizer": str(BUILTIN_DIR / "tokenizer.json"),
                           "dimension": 256, **kw})


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def torch_model():
    return load_model(BUILTIN)


@pytest.mark.parametrize("pooling", ["mean", "eos"])
def test_encode_equals_the_torch_embedder(torch_model, pooling):
    spec = _spec(pooling, eos_token=7)
    encoder = QueryEncoder(BUILTIN, spec)
    tokenizer = load_tokenizer(spec.tokenizer)
    want = embed_tokens(torch_model, [tokenizer.encode(t) for t in TEXTS], spec)  # what the index stores
    _assert_close(encoder.encode(TEXTS), want)


@pytest.mark.parametrize("pooling", ["mean", "eos"])
def test_encode_pools_the_final_hidden_states(torch_model, pooling):
    """Written out against forward_hidden: mean over the text's tokens, or the state at the appended eos."""
    encoder = QueryEncoder(BUILTIN, SimpleNamespace(pooling=pooling, eos_token=3, tokenizer="tokenizer.json"))
    tokens = encoder.tokenizer.encode(TEXTS[1])
    if pooling == "eos":
        want = torch_model.forward_hidden(tokens + [3]).last[0, -1].numpy()
    else:
        want = torch_model.forward_hidden(tokens).last[0].mean(dim=0).numpy()
    _assert_close(encoder.encode([TEXTS[1]])[0], want)


@pytest.mark.parametrize("pooling", ["mean", "eos"])
def test_a_batch_encodes_as_each_text_alone(pooling, monkeypatch):
    """70 texts of 1-40 words: encoded in two batches (64 and 6, shortest first), each vector as the text's
    own, in the input order."""
    encoder = QueryEncoder(BUILTIN, _spec(pooling, eos_token=7))
    words = " ".join(TEXTS).split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 41, 70)]
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    batches = []
    hidden_batch = encoder.model.hidden_batch
    monkeypatch.setattr(encoder.model, "hidden_batch", lambda lists: (batches.append(lists), hidden_batch(lists))[1])
    together = encoder.encode(texts)
    assert [len(b) for b in batches] == [64, 6]
    lengths = [len(tokens) for b in batches for tokens in b]
    assert lengths == sorted(lengths)  # so a batch's texts end at nearly the same step
    assert together.dtype == np.float32 and together.shape == alone.shape
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5 * float(np.abs(alone).max()))


def test_max_tokens_cuts_the_text_before_eos(tmp_path):
    model = save_random_checkpoint(tmp_path / "tiny.pth", "7", n_layer=2, n_embd=32, head_size=16,
                                   vocab_size=4096, seed=2)
    spec = _spec("eos", dimension=32, max_tokens=4, eos_token=5)
    encoder = QueryEncoder(model, spec)
    long = TEXTS[3]
    assert encoder.tokens(long) == encoder.tokenizer.encode(long)[:4] + [5]
    want = embed_tokens(load_model(model), [encoder.tokenizer.encode(long)], spec)
    _assert_close(encoder.encode([long]), want)


def test_refusals(tmp_path):
    v6 = save_random_checkpoint(tmp_path / "v6.pth", "6", n_layer=1, n_embd=32, head_size=16, vocab_size=4096)
    with pytest.raises(ValueError, match="RWKV-6.*torch"):
        QueryEncoder(v6, _spec("mean", dimension=32))
    with pytest.raises(ValueError, match="dimension 128.*256 wide"):
        QueryEncoder(BUILTIN, _spec("mean", dimension=128))
    with pytest.raises(ValueError, match="eos_token 99999 is outside"):
        QueryEncoder(BUILTIN, _spec("eos", eos_token=99999))
    with pytest.raises(ValueError, match="unknown pooling 'last'"):
        QueryEncoder(BUILTIN, SimpleNamespace(pooling="last", eos_token=0, tokenizer="tokenizer.json"))
    encoder = QueryEncoder(BUILTIN, _spec("mean"))
    with pytest.raises(ValueError, match="no tokens"):
        encoder.encode([""])
    with pytest.raises(ValueError, match="list of texts"):
        encoder.encode("one query")


def test_encoding_imports_no_torch():
    code = ("from types import SimpleNamespace\n"
            "from docstream.tasks.query_vector import QueryEncoder\n"
            f"e = QueryEncoder({str(BUILTIN)!r}, SimpleNamespace(pooling='eos', eos_token=0, "
            "tokenizer='tokenizer.json', max_tokens=1024, dimension=256))\n"
            "v = e.encode(['a ghost walks on the castle platform at midnight', 'parse options'])\n"
            "assert v.shape == (2, 256), v.shape\n")
    assert imported_by(code, ["torch"]) == []


def test_token_weights_weigh_the_mean_as_the_torch_embedder_does(torch_model, tmp_path):
    weights = np.random.default_rng(5).uniform(0.01, 1.0, 4096).astype(np.float32)
    np.save(tmp_path / "w.npy", weights)
    spec = _spec("mean", token_weights=str(tmp_path / "w.npy"))
    tokenizer = load_tokenizer(spec.tokenizer)
    want = embed_tokens(torch_model, [tokenizer.encode(t) for t in TEXTS], spec)
    _assert_close(QueryEncoder(BUILTIN, spec).encode(TEXTS), want)
    plain = QueryEncoder(BUILTIN, _spec("mean")).encode(TEXTS)
    assert not np.allclose(plain, want, rtol=1e-3)
