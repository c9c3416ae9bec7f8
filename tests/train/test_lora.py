"""LoRA fine-tuning: only the adapters train, the adapter is saved on its own, a merged model is a BlinkDL .pth
that the official package reads with the same logits, and a resumed run follows the same curve."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from docstream.cli import main
from docstream.model import load_model
from docstream.model.loader import build_model
from docstream.testing.checkpoints import make_random_checkpoint, save_random_checkpoint
from docstream.train import loop
from docstream.train.config import TrainConfig
from docstream.train.loop import train
from docstream.train.lora import add_lora, lora_parameters, merged_state
from tests.official import run_official
from tests.train.test_train import corpus, curve, tiny  # noqa: F401  (corpus is a fixture)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.pth"
    return save_random_checkpoint(path, "7", n_layer=2, n_embd=32, head_size=16, vocab_size=300, seed=3)


@pytest.fixture(scope="module")
def merged_run(corpus, base, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("lora")
    config = tiny(corpus, out, init_from=base, lora_rank=4, merge=True, lr=2e-2, lr_final=2e-3, max_steps=12,
                  eval_every=6, save_every=6)
    return config, train(config)


def test_only_the_adapters_train_and_a_new_adapter_changes_nothing():
    model = build_model(make_random_checkpoint("7", n_layer=2, n_embd=32, head_size=16, vocab_size=50, seed=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 50, (2, 9))
    want = model.forward(x, all_logits=True)[0]
    names = add_lora(model, rank=4, alpha=8)
    assert names == [f"blocks.{i}.{m}" for i in range(2) for m in ("att.receptance", "att.key", "att.value",
                                                                       "att.output", "ffn.key", "ffn.value")]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    assert sum(p.numel() for p in lora_parameters(model)) == 2 * (4 * 4 * (32 + 32) + 4 * (32 + 128) + 4 * (128 + 32))
    assert torch.equal(model.forward(x, all_logits=True)[0], want)  # B starts at zero
    merged = merged_state(model)
    assert merged.keys() == before.keys() and all(torch.equal(merged[k], before[k]) for k in before)


@pytest.mark.parametrize("version", ["4", "6"])
def test_other_versions_adapt_their_own_matrices(version):
    model = build_model(make_random_checkpoint(version, n_layer=1, n_embd=32, head_size=16, vocab_size=50, seed=2))
    names = add_lora(model, rank=2, alpha=2)
    assert "blocks.0.ffn.receptance" in names and "blocks.0.att.key" in names
    with pytest.raises(ValueError, match="no matrix of this RWKV-.* matches the LoRA targets nothing"):
        add_lora(build_model(make_random_checkpoint(version, n_layer=1, n_embd=32, head_size=16, vocab_size=50)),
                 rank=2, alpha=2, targets=("nothing",))


def test_a_lora_run_saves_the_adapter_merges_and_keeps_the_base(merged_run, base):
    config, result = merged_run
    out = config.out
    assert result.model_path == out / "model.pth"
    spec = json.loads((out / "adapter.json").read_text())
    assert spec["rank"] == 4 and spec["alpha"] == 8.0 and len(spec["modules"]) == 12
    adapter = load_file(str(out / "adapter.safetensors"))
    assert set(adapter) == {f"{m}.lora_{ab}" for m in spec["modules"] for ab in "AB"}
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if k.endswith("lora_B"))  # it trained
    tuned, original = torch.load(out / "model.pth", weights_only=True), torch.load(base, weights_only=True)
    assert tuned.keys() == original.keys()
    changed = {k for k in original if not torch.equal(tuned[k], original[k])}
    assert changed == {f"{m}.weight" for m in spec["modules"]}  # only the adapted matrices moved
    # the merged weights are the base plus (alpha / rank) * B @ A, from the saved adapter
    m = "blocks.1.att.key"
    want = original[m + ".weight"] + 2.0 * adapter[m + ".lora_B"] @ adapter[m + ".lora_A"]
    assert torch.allclose(tuned[m + ".weight"], want, atol=1e-6)
    # held-out bits per byte: below the base model's on the same text
    from docstream.tokenizer import load_tokenizer
    from docstream.train.data import heldout_bytes

    text = heldout_bytes(config.heldout, config.eval_bytes)
    before = loop.heldout_bits_per_byte(load_model(base), load_tokenizer(out / "tokenizer.json"), text)
    assert result.heldout_bpb < before


def test_the_merged_model_matches_the_official_package(merged_run):
    config, _ = merged_run
    path = config.out / "model.pth"
    seqs = [[0, 17, 42, 5, 299, 100, 3, 8], [12, 12, 250, 1, 0, 77, 64, 9]]
    official = run_official(path, "7", seqs)
    model = load_model(path)
    for seq, ref in zip(seqs, official):
        logits, _ = model.forward(seq, all_logits=True)
        assert (logits[0] - ref["all"]).abs().max().item() <= 1e-4


def test_a_resumed_lora_run_follows_the_same_curve(corpus, base, tmp_path, monkeypatch):  # noqa: F811
    whole = train(tiny(corpus, tmp_path / "whole", init_from=base, lora_rank=2, max_steps=6))
    out = tmp_path / "cut"
    real_save = loop._save
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(corpus, out, init_from=base, lora_rank=2, max_steps=6))
    monkeypatch.setattr(loop, "_save", real_save)
    result = train(tiny(corpus, out, init_from=base, lora_rank=2, max_steps=6))
    assert calls == [1] and result.model_path == out / "adapter.safetensors" and not (out / "model.pth").exists()
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (whole.out / "log.jsonl").read_text().splitlines()]
    assert curve(logs) == curve(want)
    assert load_file(str(out / "adapter.safetensors")).keys() == load_file(str(whole.model_path)).keys()


def test_lora_settings_are_checked(corpus, base, tmp_path, capsys):  # noqa: F811
    with pytest.raises(ValueError, match="lora_rank adapts an existing model: give it with --init-from"):
        TrainConfig(data=[corpus], heldout=[corpus], out=tmp_path, lora_rank=4)
    with pytest.raises(ValueError, match="add --lora-rank R"):
        TrainConfig(data=[corpus], heldout=[corpus], out=tmp_path, init_from=base, merge=True)
    code = main(["train", "--data", str(corpus / "train"), "--heldout", str(corpus / "heldout"), "--out",
                 str(tmp_path / "x"), "--lora-rank", "0", "--init-from", str(base)])
    assert code == 2 and "lora_rank" in capsys.readouterr().err
