"""docstream train: the loop learns, resumes onto the same loss curve, exports BlinkDL checkpoints that the
official rwkv package reads identically, fine-tunes other versions, and refuses mismatched resumes."""
from __future__ import annotations

import json
import math

import pytest
import torch

from docstream.cli import main
from docstream.model import load_model
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.tokenizer import load_tokenizer
from docstream.train import loop
from docstream.train.bpe import END_OF_TEXT, train_bpe
from docstream.train.card import gzip_bits_per_byte, unigram_bits_per_byte
from docstream.train.config import TrainConfig
from docstream.train.loop import learning_rate, train
from tests.official import run_official

TEXT = ("The river rose in the night and the mill wheel turned faster than the miller had ever seen. "
        "By morning the lower field was a lake, and the geese sailed where the barley had been. ")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "heldout").mkdir()
    for i in range(4):
        (root / "train" / f"doc{i}.txt").write_text(TEXT * (3 + i) + f"Chapter {i} ends here.\n")
    (root / "heldout" / "h.txt").write_text("The miller saw the geese sail over the lower field at night.\n")
    return root


def tiny(corpus, out, **kw) -> TrainConfig:
    settings = dict(data=[corpus / "train"], heldout=[corpus / "heldout"], out=out, vocab_size=300, n_layer=2,
                    n_embd=32, head_size=16, ctx_len=24, batch_size=4, lr=3e-3, lr_final=3e-4, warmup_steps=2,
                    max_steps=6, eval_every=3, save_every=3, quiet=True, threads=1)
    settings.update(kw)
    return TrainConfig(**settings)


def curve(log):
    return [(r["step"], r["loss"], r["grad_norm"], r.get("heldout_bpb")) for r in log]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    result = train(tiny(corpus, out))
    return out, result


def test_bpe_tokenizer_is_byte_level_with_end_of_text_first(corpus, tmp_path):
    path = train_bpe([corpus / "train"], 300, tmp_path / "tok.json")
    tok = load_tokenizer(path)
    assert tok.vocab_size == 300
    assert tok.token_to_id(END_OF_TEXT) == 0
    text = "Unseen wörds, emoji 🐟 and tabs\tall survive."
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(TEXT)) < len(TEXT.encode()) / 2  # merges were learned from the data


def test_bpe_refuses_a_vocabulary_below_the_byte_alphabet(corpus, tmp_path):
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        train_bpe([corpus / "train"], 100, tmp_path / "tok.json")


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_final_rate(corpus, tmp_path):
    config = tiny(corpus, tmp_path, warmup_steps=4, max_steps=20, lr=1e-3, lr_final=1e-4)
    rates = [learning_rate(config, s) for s in range(20)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))
    assert learning_rate(config, 20) == pytest.approx(1e-4)
    assert learning_rate(config, 12) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 8 / 16)))


def test_training_lowers_the_loss(corpus, tmp_path):
    result = train(tiny(corpus, tmp_path, max_steps=30, eval_every=30, save_every=30))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 30
    assert log[0]["loss"] == pytest.approx(math.log(300), abs=0.5)  # a new model is near uniform
    assert sum(r["loss"] for r in log[-5:]) / 5 < log[0]["loss"] - 1.5
    assert result.heldout_bpb is not None and result.heldout_bpb < 8


def test_an_interrupted_run_resumes_onto_the_same_loss_curve(corpus, tmp_path, uninterrupted, monkeypatch):
    whole_dir, _ = uninterrupted
    real_save = loop._save

    def save_then_die(config, model, optimizer, step, elapsed, log):
        real_save(config, model, optimizer, step, elapsed, log)
        raise KeyboardInterrupt  # the process is stopped right after its first checkpoint

    monkeypatch.setattr(loop, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(corpus, tmp_path))
    monkeypatch.setattr(loop, "_save", real_save)
    first = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 2, 3]
    result = train(tiny(corpus, tmp_path))
    assert result.steps == 6
    resumed = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    whole = [json.loads(line) for line in (whole_dir / "log.jsonl").read_text().splitlines()]
    assert curve(resumed) == curve(whole)
    a = torch.load(tmp_path / "model.pth", weights_only=True)
    b = torch.load(whole_dir / "model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_other_settings_is_refused_naming_them(corpus, uninterrupted):
    out, _ = uninterrupted
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.003 there, 0.001 now\)"):
        train(tiny(corpus, out, lr=1e-3))


def test_exported_model_matches_the_official_package(uninterrupted):
    out, _ = uninterrupted
    model = load_model(out / "model.pth")
    assert model.version == "7"
    seqs = [[0, 17, 42, 5, 299, 100, 3, 8], [12, 12, 250, 1, 0, 77, 64, 9]]
    official = run_official(out / "model.pth", "7", seqs)
    for seq, ref in zip(seqs, official):
        logits, _ = model.forward(seq, all_logits=True)
        assert (logits[0] - ref["all"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("version", ["4", "5.2", "6"])
def test_fine_tuning_keeps_the_version_and_changes_the_weights(corpus, tmp_path, version):
    base = save_random_checkpoint(tmp_path / "base.pth", version, n_layer=2, n_embd=32, head_size=16,
                                  vocab_size=300, seed=3)
    out = tmp_path / "ft"
    result = train(tiny(corpus, out, init_from=base, tokenizer=None, max_steps=3, eval_every=3))
    tuned = load_model(result.model_path)
    original = load_model(base)
    assert tuned.version == version
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert "blocks.0.att.key.weight" in changed and "head.weight" in changed
    assert math.isfinite(result.loss)


def test_fine_tuning_refuses_a_tokenizer_larger_than_the_model(corpus, tmp_path):
    base = save_random_checkpoint(tmp_path / "v7.pth", "7", n_layer=1, n_embd=32, head_size=16, vocab_size=260)
    with pytest.raises(ValueError, match="vocabulary of 260 ids but the tokenizer has 300"):
        train(tiny(corpus, tmp_path / "ft", init_from=base))


def test_train_command_reports_loss_and_bits_per_byte(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--data", str(corpus / "train"), "--heldout", str(corpus / "heldout"), "--out", str(out),
                 "--vocab-size", "300", "--n-layer", "1", "--n-embd", "32", "--head-size", "16", "--ctx-len", "16",
                 "--batch-size", "2", "--max-steps", "2", "--warmup-steps", "1", "--eval-every", "2", "--quiet",
                 "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps, 64 tokens" in printed and "bits per byte" in printed
    assert load_model(out / "model.pth").config.n_layer == 1


def test_train_command_names_a_missing_data_folder(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--heldout", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_baselines_on_known_distributions():
    assert unigram_bits_per_byte(bytes(range(256)) * 4) == pytest.approx(8.0)
    assert unigram_bits_per_byte(b"ab" * 100) == pytest.approx(1.0)
    assert gzip_bits_per_byte(b"a" * 100_000) < 0.05
    noise = torch.randint(0, 256, (50_000,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert gzip_bits_per_byte(bytes(noise.tolist())) > 7.9
