"""The numpy RWKV-7 against docstream's torch model: same final hidden states, and no torch imported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from docstream.model import load_model, numpy_v7
from docstream.model.numpy_v7 import NumpyRWKV7, rwkv_version
from docstream.model.pth_numpy import load_pth
from docstream.testing.checkpoints import make_random_checkpoint, save_random_checkpoint
from tests.helpers import imported_by

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ROOT / "docstream" / "data" / "default_model" / "model.pth"
#: fp32 agreement, relative to the hidden states' largest magnitude (seen: ~1e-6)
TOL = 1e-4
LENGTHS = (1, 7, 65)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(path: Path, dtype: torch.dtype = torch.float32, unused_layer0_residual: bool = False) -> Path:
    """A random BlinkDL-layout RWKV-7: 3 layers, odd vocabulary, FFN and low-rank widths."""
    sd = make_random_checkpoint("7", n_layer=3, n_embd=64, head_size=16, vocab_size=211, dim_ffn=257,
                                lora={"decay": 8, "iclr": 12, "value": 8, "gate": 24}, seed=3, dtype=dtype)
    if unused_layer0_residual:  # some BlinkDL releases store layer 0's (unused) value-residual tensors
        for name in ("v0", "v1", "v2"):
            sd[f"blocks.0.att.{name}"] = sd[f"blocks.1.att.{name}"].clone() * 7
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module", params=["fp32", "bf16+layer0_v"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("numpy_v7")
    if request.param == "fp32":
        return _tiny(root / "tiny.pth")
    return _tiny(root / "tiny_bf16.pth", torch.bfloat16, unused_layer0_residual=True)


def _torch_hidden(model, tokens: list[int]) -> np.ndarray:
    return model.forward_hidden(tokens).last[0].float().numpy()


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * scale)


def _check_parity(path: Path) -> None:
    ours = NumpyRWKV7(load_pth(path))
    theirs = load_model(path)
    rng = np.random.default_rng(0)
    for length in LENGTHS:
        tokens = rng.integers(0, ours.vocab_size, length).tolist()
        got, want = ours.hidden(tokens), _torch_hidden(theirs, tokens)
        _assert_close(got, want)
        _assert_close(got.mean(axis=0), want.mean(axis=0))  # mean pooling
        _assert_close(got[-1], want[-1])  # last / eos pooling


def test_hidden_states_match_torch_on_random_checkpoints(checkpoint):
    _check_parity(checkpoint)


def test_hidden_states_match_torch_on_the_builtin_model():
    _check_parity(BUILTIN)


def test_config_is_read_off_the_tensors(checkpoint):
    m = NumpyRWKV7(load_pth(checkpoint))
    assert (m.n_layer, m.n_embd, m.vocab_size, m.n_head, m.head_size) == (3, 64, 211, 4, 16)


def test_a_prefix_has_the_same_hidden_states(checkpoint):
    """RNN semantics: a position's hidden state depends only on the tokens up to it (to float rounding:
    the BLAS sums a product's rows differently for other row counts)."""
    m = NumpyRWKV7(load_pth(checkpoint))
    tokens = list(range(3, 40))
    _assert_close(m.hidden(tokens[:10]), m.hidden(tokens)[:10])


#: a batch against its texts run alone: the same arithmetic, but the BLAS sums a product's rows
#: differently for other row counts (seen: ~5e-7 of the states' scale)
BATCH_TOL = 1e-5


def test_a_batch_has_each_texts_own_hidden_states(checkpoint):
    """Texts of lengths 1 to 65, in no order (two of one length), run together: each as if alone --
    the token shift starts each text from zeros, and a text's state ends with it."""
    m = NumpyRWKV7(load_pth(checkpoint))
    rng = np.random.default_rng(1)
    texts = [rng.integers(0, m.vocab_size, n).tolist() for n in (7, 65, 1, 30, 2, 7)]
    got = m.hidden_batch(texts)
    assert len(got) == len(texts)
    for tokens, hidden in zip(texts, got):
        want = m.hidden(tokens)
        assert hidden.dtype == np.float32 and hidden.shape == want.shape
        np.testing.assert_allclose(hidden, want, rtol=BATCH_TOL, atol=BATCH_TOL * float(np.abs(want).max()))
    assert m.hidden_batch([]) == []


def test_hidden_batch_refuses_bad_texts_by_their_index(checkpoint):
    m = NumpyRWKV7(load_pth(checkpoint))
    with pytest.raises(ValueError, match="non-empty.*text 1"):
        m.hidden_batch([[1, 2], []])
    with pytest.raises(ValueError, match="token id 211 of text 2 is outside"):
        m.hidden_batch([[1], [2], [3, 211]])
    with pytest.raises(ValueError, match="list of token lists"):
        m.hidden_batch(np.array([1, 2, 3]))


def test_bad_tokens_are_refused(checkpoint):
    m = NumpyRWKV7(load_pth(checkpoint))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        m.hidden([0, 211])
    with pytest.raises(ValueError, match="non-empty"):
        m.hidden([])


def test_other_versions_and_damaged_weights_are_refused(tmp_path):
    v6 = save_random_checkpoint(tmp_path / "v6.pth", "6", n_layer=1, n_embd=32, head_size=16, vocab_size=50)
    weights = load_pth(v6)
    assert rwkv_version(weights) == "6"
    with pytest.raises(ValueError, match="RWKV-6.*torch"):
        NumpyRWKV7(weights)
    weights = load_pth(_tiny(tmp_path / "nan.pth"))
    weights["blocks.1.att.key.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match="blocks.1.att.key.weight.*NaN"):
        NumpyRWKV7(weights)
    weights["blocks.1.att.key.weight"][0, 0] = 0
    del weights["blocks.2.ffn.key.weight"]
    with pytest.raises(ValueError, match="lacks tensor 'blocks.2.ffn.key.weight'"):
        NumpyRWKV7(weights)


def test_no_torch_is_imported():
    code = ("from docstream.model.pth_numpy import load_pth\n"
            "from docstream.model.numpy_v7 import NumpyRWKV7\n"
            f"h = NumpyRWKV7(load_pth({str(BUILTIN)!r})).hidden([1, 2, 3])\n"
            "assert h.shape == (3, 256), h.shape\n")
    assert imported_by(code, ["torch"]) == []


def test_products_run_on_one_blas_thread_and_the_count_comes_back(checkpoint, monkeypatch):
    """OpenBLAS spreading a query's small products over busy cores made a query 10-50x slower."""
    blas = numpy_v7._openblas()
    if blas is None:
        pytest.skip("numpy does not compute with OpenBLAS here")
    get, put = blas
    original = get()
    seen = []
    wkv = numpy_v7._wkv
    monkeypatch.setattr(numpy_v7, "_wkv", lambda *args: (seen.append(get()), wkv(*args))[1])
    put(2)
    try:
        if get() != 2:
            pytest.skip("this OpenBLAS runs one thread only")
        NumpyRWKV7(load_pth(checkpoint)).hidden([1, 2, 3])
        assert seen == [1, 1, 1]
        assert get() == 2
    finally:
        put(original)
