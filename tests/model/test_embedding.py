"""Passage embeddings: the sidecar spec is read, validated and written; pooling is exact under padding and
batching and matches a forward pass of the passage alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from docstream.model import load_model
from docstream.model.embedding import (
    EmbedderSpec,
    embed_tokens,
    pad_passages,
    pooled,
    read_embedder_spec,
    write_embedder_spec,
)
from docstream.testing.checkpoints import save_random_checkpoint
from tests.helpers import imported_by

VOCAB = 300
PASSAGES = [[5, 17, 42, 8, 99, 3], [7], [250, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 1], [64, 65, 66, 67]]


@pytest.fixture(scope="module", params=["7", "6"])
def model(request, tmp_path_factory):
    path = save_random_checkpoint(tmp_path_factory.mktemp("emb") / "m.pth", request.param, n_layer=2, n_embd=32,
                                  head_size=16, vocab_size=VOCAB, seed=4)
    return load_model(path)


def spec(pooling: str, **kw) -> EmbedderSpec:
    return EmbedderSpec(pooling=pooling, eos_token=kw.pop("eos_token", 1), tokenizer="tokenizer.json", dimension=32,
                        **kw)


def test_eos_pooling_is_the_last_hidden_state_of_the_passage_followed_by_eos(model):
    got = embed_tokens(model, PASSAGES, spec("eos"))
    for row, tokens in zip(got, PASSAGES):
        alone = model.forward_hidden(tokens + [1]).last[0, -1].numpy()
        np.testing.assert_allclose(row, alone, atol=1e-5)


def test_mean_pooling_is_the_mean_of_the_passage_hidden_states(model):
    got = embed_tokens(model, PASSAGES, spec("mean"))
    for row, tokens in zip(got, PASSAGES):
        alone = model.forward_hidden(tokens).last[0].mean(dim=0).numpy()
        np.testing.assert_allclose(row, alone, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "eos"])
def test_results_do_not_depend_on_the_batch_size(model, pooling):
    one = embed_tokens(model, PASSAGES, spec(pooling), batch_size=1)
    for size in (2, 3, 16):
        np.testing.assert_allclose(embed_tokens(model, PASSAGES, spec(pooling), batch_size=size), one, atol=1e-5)


def test_passages_are_cut_at_max_tokens(model):
    got = embed_tokens(model, [PASSAGES[2]], spec("eos", max_tokens=4))
    alone = model.forward_hidden(PASSAGES[2][:4] + [1]).last[0, -1].numpy()
    np.testing.assert_allclose(got[0], alone, atol=1e-5)


def test_pooled_is_differentiable(model):
    padded, lengths = pad_passages(PASSAGES, spec("mean"))
    model.requires_grad_(True)
    try:
        pooled(model, padded, lengths, spec("mean")).square().sum().backward()
        assert model.emb.weight.grad is not None and model.emb.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


def test_mean_pooling_refuses_an_empty_passage_naming_it(model):
    with pytest.raises(ValueError, match="passage 1 has no tokens"):
        embed_tokens(model, [[3], [], [4]], spec("mean"))
    assert embed_tokens(model, [[]], spec("eos")).shape == (1, 32)  # eos alone is a passage


def test_a_spec_for_another_model_is_refused(model):
    with pytest.raises(ValueError, match="dimension 64 but the model is 32 wide"):
        embed_tokens(model, PASSAGES, EmbedderSpec(pooling="mean", tokenizer="t.json", dimension=64))
    with pytest.raises(ValueError, match="eos_token 65535 is outside"):
        embed_tokens(model, PASSAGES, spec("eos", eos_token=65535))


def test_spec_round_trips_and_resolves_the_tokenizer_beside_it(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    assert read_embedder_spec(tmp_path / "model.pth") is None
    write_embedder_spec(tmp_path / "model.embedder.json", spec("eos", eos_token=65535))
    got = read_embedder_spec(tmp_path / "model.pth")
    assert got == spec("eos", eos_token=65535).model_copy(update={"tokenizer": str(tmp_path / "tokenizer.json")})
    assert read_embedder_spec(tmp_path / "other.pth") is None  # another model's stem
    write_embedder_spec(tmp_path / "embedder.json", spec("mean"))
    assert read_embedder_spec(tmp_path / "other.pth").pooling == "mean"  # the folder's generic sidecar
    assert read_embedder_spec(tmp_path / "model.pth").pooling == "eos"  # the model's own comes first


@pytest.mark.parametrize("content, message", [
    ({"format": 1, "pooling": "max", "tokenizer": "tokenizer.json", "dimension": 32}, "pooling"),
    ({"format": 2, "pooling": "mean", "tokenizer": "tokenizer.json", "dimension": 32}, "format"),
    ({"format": 1, "pooling": "mean", "tokenizer": "tokenizer.json", "dimension": 0}, "dimension"),
    ({"format": 1, "pooling": "mean", "tokenizer": "tokenizer.json", "dimension": 32, "extra": 1}, "extra"),
    ({"format": 1, "pooling": "mean", "tokenizer": "missing.json", "dimension": 32}, "missing.json"),
    ([1, 2], "JSON object"),
])
def test_a_bad_spec_is_refused_naming_the_file_and_field(tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "embedder.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        read_embedder_spec(tmp_path / "model.pth")
    assert "embedder.json" in str(err.value)


def test_an_unreadable_spec_is_refused_naming_the_file(tmp_path):
    (tmp_path / "m.embedder.json").write_text("{not json")
    with pytest.raises(ValueError, match="m.embedder.json is not a readable embedder spec"):
        read_embedder_spec(tmp_path / "m.pth")


def test_right_padding_holds_the_passages_in_front(model):
    padded, lengths = pad_passages([[5, 6], [7, 8, 9]], spec("eos"))
    assert padded.tolist() == [[5, 6, 1, 0], [7, 8, 9, 1]] and lengths.tolist() == [3, 4]
    assert torch.is_tensor(padded) and padded.dtype == torch.long


def test_reading_a_spec_does_not_import_torch():
    # the query path reads the spec and must stay torch-free (importing torch alone takes seconds)
    assert imported_by("from docstream.model.embedding import read_embedder_spec, EmbedderSpec", ["torch"]) == []


def test_pooled_lists_keeps_the_order_given_and_carries_gradients(model):
    from docstream.model.embedding import pooled_lists

    model.requires_grad_(True)
    try:
        vectors = pooled_lists(model, PASSAGES, spec("eos"), batch_size=2)
        np.testing.assert_allclose(vectors.detach().numpy(), embed_tokens(model, PASSAGES, spec("eos")), atol=1e-5)
        vectors[2].sum().backward()  # only passage 2's tokens get a gradient through the embedding table
        touched = model.emb.weight.grad.abs().sum(dim=1).nonzero().flatten().tolist()
        assert sorted(touched) == sorted(set(PASSAGES[2]) | {1})
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)


def test_token_weights_make_mean_pooling_a_weighted_mean(model, tmp_path):
    weights = np.random.default_rng(3).uniform(0.05, 2.0, VOCAB).astype(np.float32)
    np.save(tmp_path / "w.npy", weights)
    weighted = spec("mean", token_weights=str(tmp_path / "w.npy"))
    got = embed_tokens(model, PASSAGES, weighted, batch_size=2)
    for row, tokens in zip(got, PASSAGES):
        hidden = model.forward_hidden(tokens).last[0].numpy()
        want = (weights[tokens][:, None] * hidden).sum(0) / weights[tokens].sum()
        np.testing.assert_allclose(row, want, atol=1e-5)
    assert not np.allclose(got, embed_tokens(model, PASSAGES, spec("mean")), atol=1e-3)
    np.save(tmp_path / "short.npy", weights[:10])
    with pytest.raises(ValueError, match="hold 10 weights, but the model's vocabulary has 300"):
        embed_tokens(model, PASSAGES, spec("mean", token_weights=str(tmp_path / "short.npy")))


def test_token_weights_are_found_beside_the_spec_and_must_exist(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    np.save(tmp_path / "w.npy", np.ones(VOCAB, np.float32))
    write_embedder_spec(tmp_path / "m.embedder.json", spec("mean", token_weights="w.npy"))
    assert read_embedder_spec(tmp_path / "m.pth").token_weights == str((tmp_path / "w.npy").resolve())
    (tmp_path / "w.npy").unlink()
    with pytest.raises(ValueError, match="names the token weights 'w.npy'"):
        read_embedder_spec(tmp_path / "m.pth")
