"""RWKV-7 from-scratch initialisation (docstream.train.init) on a tiny model.

Expected values come from the formulas of RWKV-LM's RWKV-v7/train_temp/src/model.py (the same ones
docstream/train/init.py documents) and from properties they imply (orthogonality, monotonic layer
ratios, identity blocks), not from numbers recorded by running the code.
"""
import math
import subprocess
import sys
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from docstream.model import build_model
from docstream.model.config import ModelConfig
from docstream.testing.checkpoints import make_random_checkpoint
from docstream.model.v7 import RWKV7
from docstream.train.init import init_rwkv7_
from docstream.train.config import TrainConfig
from docstream.train.loop import new_rwkv7

L, C, N, V, FFN = 3, 64, 16, 100, 256
H = C // N
LORA = {"decay": 16, "iclr": 16, "value": 8, "gate": 16}
MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")


def _config(**kw) -> ModelConfig:
    sizes = {"n_layer": L, "n_embd": C, "dim_att": C, "dim_ffn": FFN, "vocab_size": V, "head_size": N,
             "lora": LORA}
    return ModelConfig(version="7", **{**sizes, **kw})


def _fresh(dtype=torch.float32, **kw) -> RWKV7:
    """A new model whose every parameter holds NaN, so any parameter the init skips shows."""
    model = RWKV7(_config(**kw)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


@pytest.fixture(scope="module")
def model() -> RWKV7:
    return init_rwkv7_(_fresh(), seed=0).set_backend("torch")


def _att(model, layer):
    return model.blocks[layer].att


def _eye(n):
    return torch.eye(n)


def test_every_parameter_is_set_and_finite(model):
    reference = RWKV7(_config())
    assert model.state_dict().keys() == reference.state_dict().keys()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert p.shape == reference.state_dict()[name].shape, name


def test_layer0_has_no_value_residual_parameters(model):
    assert not hasattr(_att(model, 0), "v0") and not hasattr(_att(model, 0), "v1")
    assert all(hasattr(_att(model, i), "v0") for i in range(1, L))


def test_mix_coefficients_shrink_with_depth_and_channel(model):
    for name in MIXES:
        per_layer = [getattr(_att(model, i), name).view(C) for i in range(L)]
        for layer, x in enumerate(per_layer):
            assert ((x >= 0) & (x <= 1)).all(), (name, layer)
            assert x[0] == 1  # d = 0 at channel 0: fully the previous token
            assert (x[1:].diff() < 0).all(), (name, layer)  # larger d^e for later channels
        for earlier, later in pairwise(per_layer):
            # the exponent factor * (1 - l/L) falls with depth and d < 1, so d^e rises, 1 - d^e falls
            assert (later[1:] < earlier[1:]).all(), name
    ffn = [model.blocks[i].ffn.x_k.view(C) for i in range(L)]
    for earlier, later in pairwise(ffn):
        assert (later[1:] < earlier[1:]).all()
    # first layer: ratio_1_to_almost0 = 1, so ffn.x_k = 1 - (n/C)^(1^4) = 1 - n/C
    torch.testing.assert_close(ffn[0], 1 - torch.arange(C) / C)


def test_mix_coefficients_order_by_exponent(model):
    # exponents 0.2 (r, g) < 0.7 (k, v) < 0.9 (w, a): a smaller exponent gives a larger d^e
    for i in range(L):
        att = _att(model, i)
        x = {name: getattr(att, name).view(C)[1:] for name in MIXES}
        assert torch.equal(x["x_r"], x["x_g"]) and torch.equal(x["x_k"], x["x_v"])
        assert torch.equal(x["x_w"], x["x_a"])
        assert (x["x_r"] < x["x_k"]).all() and (x["x_k"] < x["x_w"]).all()


def test_last_layer_mix_matches_formula(model):
    # last layer: ratio_1_to_almost0 = 1 - (L-1)/L = 1/L, x_w = 1 - (n/C)^(0.9/L)
    d = torch.arange(C, dtype=torch.float64) / C
    torch.testing.assert_close(_att(model, L - 1).x_w.view(C).double(), 1 - d ** (0.9 / L))
    torch.testing.assert_close(model.blocks[L - 1].ffn.x_k.view(C).double(), 1 - d ** ((1 / L) ** 4))


def test_output_projections_and_lora_down_projections_are_zero(model):
    for i in range(L):
        att, ffn = _att(model, i), model.blocks[i].ffn
        assert not att.output.weight.any() and not ffn.value.weight.any()
        for name in ("w1", "a1", "g1") + (("v1",) if i else ()):
            assert not getattr(att, name).any(), (i, name)


def test_blocks_start_as_identity(model):
    # zero output projections: every block passes the residual stream through unchanged
    tokens = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    hidden = model.forward_hidden(tokens, all_layers=True)
    with torch.no_grad():
        start = model.blocks[0].ln0(model.emb(tokens))
    for layer in hidden.layers:
        assert torch.equal(layer, start)


def test_projections_are_orthogonal_with_reference_gains(model):
    for i in range(L):
        att = _att(model, i)
        torch.testing.assert_close(att.receptance.weight @ att.receptance.weight.T, _eye(C), atol=1e-5, rtol=0)
        torch.testing.assert_close(att.value.weight @ att.value.weight.T, _eye(C), atol=1e-5, rtol=0)
        torch.testing.assert_close(att.key.weight @ att.key.weight.T, 0.01 * _eye(C), atol=1e-6, rtol=0)
        key = model.blocks[i].ffn.key.weight  # [FFN, C], FFN > C: orthonormal columns
        torch.testing.assert_close(key.T @ key, _eye(C), atol=1e-5, rtol=0)
        for name in ("w2", "a2", "g2") + (("v2",) if i else ()):
            up = getattr(att, name)  # [D, C] with D < C: orthogonal rows of norm 0.1
            torch.testing.assert_close(up @ up.T, 0.01 * _eye(up.shape[0]), atol=1e-6, rtol=0)
    gain = 0.5 * math.sqrt(V / C)  # V > C
    torch.testing.assert_close(model.head.weight.T @ model.head.weight, gain ** 2 * _eye(C), atol=1e-5, rtol=0)


def test_tall_lora_factor_gets_extra_gain():
    # rank > C: the reference's ortho_init multiplies the gain by sqrt(rank / C)
    model = init_rwkv7_(_fresh(n_embd=16, dim_att=16, dim_ffn=64, head_size=8,
                               lora={"decay": 32, "iclr": 16, "value": 8, "gate": 16}), seed=0)
    up = _att(model, 0).w2  # [32, 16]: orthonormal columns, times 0.1 * sqrt(2)
    torch.testing.assert_close(up.T @ up, 0.02 * _eye(16), atol=1e-6, rtol=0)
    head = model.head.weight  # V = 100 > C = 16
    torch.testing.assert_close(head.T @ head, (0.5 ** 2 * V / 16) * _eye(16), atol=1e-4, rtol=0)


def test_small_vocab_head_gain_is_half():
    model = init_rwkv7_(_fresh(vocab_size=32), seed=0)
    head = model.head.weight  # [32, 64]: V < C, orthogonal rows with gain 0.5
    torch.testing.assert_close(head @ head.T, 0.25 * _eye(32), atol=1e-6, rtol=0)


def test_decay_and_gate_bases(model):
    w0 = [_att(model, i).w0.view(H, N) for i in range(L)]
    for layer in w0:
        assert (layer.diff(dim=1) > 0).all()  # zigzag and the ramp both rise inside a head
        # channel 0: ramp 0, zigzag -1: -6 + 0.5 - 2.5
        assert layer[0, 0].item() == pytest.approx(-8.0)
    for earlier, later in pairwise(w0):
        # ramp^(1 + r^0.3) falls as r grows, so deeper layers start with slower decays
        assert (later.flatten()[1:-1] < earlier.flatten()[1:-1]).all()
    # last channel: ramp 1 -> -6 + 6 + 0.5 + 2.5 in every layer
    assert all(layer[-1, -1].item() == pytest.approx(3.0) for layer in w0)
    for i in range(L):
        att = _att(model, i)
        assert (att.a0.view(H, N).diff(dim=1) > 0).all()
        assert att.a0.min() >= -0.19 - 0.3 - 0.2 - 1e-6 and att.a0.max() <= -0.19 + 0.3 + 0.2 + 1e-6
        assert (att.k_k.view(C).diff() < 0).all()
        torch.testing.assert_close(att.k_k.view(C)[[0, -1]], torch.tensor([0.76, 0.66]))
        assert torch.equal(att.k_a, torch.full_like(att.k_a, 1.02))
        assert torch.equal(att.r_k, torch.full((H, N), -0.04))
        if i:
            torch.testing.assert_close(att.v0.view(C)[[0, -1]], torch.tensor([0.93, 0.53]))
            assert (att.v0.view(C).diff() < 0).all()


def test_norms(model):
    scales = [_att(model, i).ln_x.weight for i in range(L)]
    for i, w in enumerate(scales):
        assert torch.equal(w, torch.full((C,), ((i + 1) / L) ** 0.7))
        assert not _att(model, i).ln_x.bias.any()
    assert scales[-1].eq(1).all() and scales[0].lt(scales[1]).all()
    norms = [model.blocks[0].ln0, model.ln_out] + [b.ln1 for b in model.blocks] + [b.ln2 for b in model.blocks]
    for ln in norms:
        assert ln.weight.eq(1).all() and not ln.bias.any()


def test_embedding_is_small_uniform(model):
    emb = model.emb.weight
    assert emb.abs().max() <= 1e-4
    # uniform on [-a, a] has std a / sqrt(3); 6400 draws estimate it within a few percent
    assert emb.std().item() == pytest.approx(1e-4 / math.sqrt(3), rel=0.05)


def test_initial_loss_is_near_uniform(model):
    tokens = torch.randint(0, V, (4, 33), generator=torch.Generator().manual_seed(2))
    logits, _ = model.forward(tokens[:, :-1], all_logits=True)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1)).item()
    # ln_out gives unit-variance features; each head row has norm gain * sqrt(C / V) = 0.5, so logits
    # have std ~0.5 and the expected loss is about ln V + 0.5^2 / 2
    assert abs(loss - math.log(V)) < 0.35
    assert logits.std().item() == pytest.approx(0.5, rel=0.2)


def test_same_seed_same_weights():
    a = init_rwkv7_(_fresh(), seed=7).state_dict()
    b = init_rwkv7_(_fresh(), seed=7).state_dict()
    c = init_rwkv7_(_fresh(), generator=torch.Generator().manual_seed(7)).state_dict()
    d = init_rwkv7_(_fresh(), seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    for name in ("emb.weight", "head.weight", "blocks.1.att.receptance.weight", "blocks.2.att.v2"):
        assert not torch.equal(a[name], d[name])
    # the deterministic formulas do not depend on the seed
    assert torch.equal(a["blocks.1.att.w0"], d["blocks.1.att.w0"])


def test_dtype_and_existing_values_do_not_matter():
    ref = init_rwkv7_(_fresh(), seed=3).state_dict()
    half = init_rwkv7_(_fresh(torch.bfloat16), seed=3)
    for name, p in half.state_dict().items():
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, ref[name].to(torch.bfloat16)), name
    # a model built normally (torch's own default inits) ends up identical too
    plain = init_rwkv7_(RWKV7(_config()), seed=3).state_dict()
    assert all(torch.equal(plain[k], ref[k]) for k in ref)


def test_requires_grad_is_kept():
    model = _fresh()
    model.requires_grad_(True)
    init_rwkv7_(model)
    assert all(p.requires_grad for p in model.parameters())


def test_one_layer_model():
    # the reference's ratio_0_to_1 divides by n_layer - 1; a single layer counts as the first
    model = init_rwkv7_(_fresh(n_layer=1), seed=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.blocks[0].att.ln_x.weight, torch.ones(C))


def test_rejects_other_versions():
    v6 = build_model(make_random_checkpoint("6", n_layer=1, n_embd=32, head_size=16, vocab_size=50))
    with pytest.raises(TypeError, match="RWKV-7"):
        init_rwkv7_(v6)


def _train_config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(data=[tmp_path], heldout=[tmp_path], out=tmp_path / "run", n_layer=2, n_embd=32,
                       head_size=16, seed=3, **kw)


@pytest.mark.parametrize("dim_ffn", [None, 50])
def test_training_builds_its_model_from_model_config_new(tmp_path, dim_ffn):
    """A new training model is ``init_rwkv7_`` applied to the model of ``ModelConfig.new``: the same
    weights the earlier path (a random checkpoint, loaded, then initialised) gave."""
    config = _train_config(tmp_path, dim_ffn=dim_ffn)
    model = new_rwkv7(config, 300)
    shape = ModelConfig.new("7", n_layer=2, n_embd=32, head_size=16, vocab_size=300, dim_ffn=dim_ffn)
    assert model.config == shape
    assert model.config.dim_ffn == (dim_ffn or 4 * 32)
    earlier = init_rwkv7_(build_model(make_random_checkpoint("7", n_layer=2, n_embd=32, head_size=16,
                                                             vocab_size=300, dim_ffn=dim_ffn, seed=3)), seed=3)
    got, want = model.state_dict(), earlier.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_training_does_not_load_the_test_checkpoint_generator():
    code = ("import sys, docstream.train.loop; "
            "print(sorted(m for m in sys.modules if 'synthetic' in m or m.startswith('docstream.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
