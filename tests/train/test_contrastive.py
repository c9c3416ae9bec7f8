"""docstream train --objective contrastive: pairs are valid spans, the InfoNCE loss falls, the output is a
loadable embedder with its spec, a killed run resumes onto the same curve, and settings are checked."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from docstream.cli import main
from docstream.model import load_model
from docstream.model.embedding import (
    embed_tokens,
    pad_passages,
    pooled,
    read_embedder_spec,
)
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.tokenizer import load_tokenizer
from docstream.train import contrastive
from docstream.train.bpe import train_bpe
from docstream.train.config import TrainConfig
from docstream.train.contrastive import info_nce, train_contrastive
from docstream.train.loop import train
from docstream.train.pairs import (
    SENTENCE,
    Document,
    PairSampler,
    cloze_pair,
    crop_pair,
    heldout_pairs,
    load_documents,
    neighbour_pair,
    read_pairs,
)
from tests.helpers import random_text


def topical_text(rng: random.Random, n_words: int) -> str:
    """Sentences mixing common words with a few words of the document's own: spans of one document share
    them, so matching spans is learnable (unlike text drawn from one word list)."""
    own = ["".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(5)]
    words = random_text(rng, n_words).split(" ")
    return " ".join(rng.choice(own) if rng.random() < 0.4 else w for w in words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(5)
    for part, count in (("train", 12), ("heldout", 3)):
        (root / part).mkdir()
        for i in range(count):
            (root / part / f"doc{i}.txt").write_text(topical_text(rng, rng.randint(60, 160)))
    train_bpe([root / "train"], 300, root / "tok.json")
    save_random_checkpoint(root / "base7.pth", "7", n_layer=2, n_embd=32, head_size=16, vocab_size=300, seed=2)
    return root


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return load_tokenizer(corpus / "tok.json")


def tiny(corpus, out, **kw) -> TrainConfig:
    settings = dict(objective="contrastive", data=[corpus / "train"], heldout=[corpus / "heldout"], out=out,
                    tokenizer=corpus / "tok.json", init_from=corpus / "base7.pth", ctx_len=24, span_min=8,
                    batch_size=8, lr=3e-3, lr_final=3e-4, warmup_steps=2, max_steps=6, eval_every=3, save_every=3,
                    eval_pairs=8, quiet=True, threads=1)
    settings.update(kw)
    return TrainConfig(**settings)


def curve(log):
    return [(r["step"], r["loss"], r["grad_norm"], r.get("heldout_recall1")) for r in log]


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return out, train_contrastive(tiny(corpus, out))


def is_span_of(part, ids) -> bool:
    n = len(part)
    return any(ids[s:s + n].tolist() == part for s in range(len(ids) - n + 1))


def test_crop_and_neighbour_pairs_are_nonempty_spans_of_the_document():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 40, 200):
        doc = Document("x", np.arange(1000, 1000 + n), ())
        for _ in range(50):
            a, b = crop_pair(doc, rng, 8, 24)
            assert a and b and is_span_of(a, doc.ids) and is_span_of(b, doc.ids)
            assert min(8, n) <= len(a) <= 24 and min(8, n) <= len(b) <= 24
            a, b = neighbour_pair(doc, rng, 8, 24)
            assert a and b and len(a) <= 24 and len(b) <= 24
            assert is_span_of(a + b, doc.ids)  # b starts where a ends
            if n >= 16:
                assert len(a) >= 8 and len(b) >= 8


def test_inverse_cloze_takes_the_sentence_out_of_its_context(tokenizer):
    text = "Alpha river stone. Bravo copper harbor! Charlie meadow orbit? Delta quartz saddle.\nEcho timber velvet"
    doc = Document(text, np.asarray(tokenizer.encode(text)), tuple(m.span() for m in SENTENCE.finditer(text)))
    assert len(doc.sentences) == 5
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        sentence, context = cloze_pair(doc, rng, tokenizer, 200)
        s, c = tokenizer.decode(sentence), tokenizer.decode(context)
        seen.add(s)
        assert s.split()[0] in ("Alpha", "Bravo", "Charlie", "Delta", "Echo")
        assert s not in c and s.split()[0] not in c  # the sentence is gone from its context
        assert c.strip()
    assert len(seen) == 5
    single = Document("one sentence only", np.asarray(tokenizer.encode("one sentence only")), ((0, 17),))
    assert cloze_pair(single, rng, tokenizer, 200) is None


def test_load_documents_splits_sentences(corpus, tokenizer):
    docs = load_documents([corpus / "train"], tokenizer)
    assert len(docs) == 12
    for doc in docs:
        assert doc.sentences and all(doc.text[a:b].strip() == doc.text[a:b] for a, b in doc.sentences)


def test_a_batch_is_decided_by_its_step_and_uses_distinct_documents(corpus, tokenizer):
    docs = load_documents([corpus / "train"], tokenizer)
    sampler = PairSampler(docs, tokenizer, 8, 24, seed=3)
    assert sampler.batch(5, 8) == sampler.batch(5, 8) != sampler.batch(6, 8)
    for a, b in sampler.batch(7, 12):
        assert a and b and len(a) <= 24 and len(b) <= 24


def test_jsonl_pairs_are_read_and_a_bad_line_is_named(tmp_path, tokenizer):
    good = tmp_path / "p.jsonl"
    good.write_text('{"query": "river stone", "positive": "a stone by the river"}\n\n'
                    '{"query": "copper", "positive": "harbor of copper"}\n')
    pairs = read_pairs(good, tokenizer)
    assert len(pairs) == 2 and tokenizer.decode(pairs[1][0]) == "copper"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "positive": "b"}\n{"query": "a", "positive": ""}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2 needs non-empty"):
        read_pairs(bad, tokenizer)
    bad.write_text('{"query": "a", "positive": "b"}\n{"query": "a", "positive": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 3 is not JSON"):
        read_pairs(bad, tokenizer)


def test_heldout_pairs_are_the_halves_of_separate_windows(corpus, tokenizer):
    docs = load_documents([corpus / "heldout"], tokenizer)
    pairs = heldout_pairs(docs, 10, 8)
    assert len(pairs) == 8 and all(len(a) == len(b) == 10 for a, b in pairs)
    assert len({tuple(a) for a, _ in pairs}) == 8
    with pytest.raises(ValueError, match="recall@1 needs at least 2"):
        heldout_pairs(docs[:1], 10_000, 8)


def test_training_lowers_the_infonce_loss(corpus, tmp_path, tokenizer):
    config = tiny(corpus, tmp_path, max_steps=40, eval_every=40, save_every=40)
    sampler = PairSampler(load_documents([corpus / "train"], tokenizer), tokenizer, 8, 24, seed=99)
    fixed = sampler.batch(0, 12)  # pairs the training never sees as such

    def loss_of(model):
        spec = read_embedder_spec(tmp_path / "model.pth")
        with torch.no_grad():
            padded, lengths = pad_passages([a for a, _ in fixed] + [b for _, b in fixed], spec)
            v = pooled(model, padded, lengths, spec)
        return info_nce(v[:12], v[12:], 0.05).item()

    result = train_contrastive(config)
    before, after = loss_of(load_model(corpus / "base7.pth")), loss_of(load_model(result.model_path))
    assert after < before - 1.0 and after < math.log(12) - 0.2, (before, after)  # below chance, too
    log = read_log(tmp_path)
    assert len(log) == 40 and log[-1]["heldout_recall1"] == result.heldout_recall1
    assert sum(r["loss"] for r in log[-5:]) / 5 < sum(r["loss"] for r in log[:5]) / 5


def test_output_is_a_loadable_embedder_with_its_spec_and_tokenizer(uninterrupted, corpus):
    out, result = uninterrupted
    spec = read_embedder_spec(result.model_path)
    assert spec.pooling == "mean" and spec.dimension == 32 and spec.max_tokens == 1024
    assert spec.tokenizer == str(out / "tokenizer.json")
    assert (out / "tokenizer.json").read_bytes() == (corpus / "tok.json").read_bytes()
    model = load_model(result.model_path)
    assert model.version == "7"
    vectors = embed_tokens(model, [[5, 6, 7], [8, 9]], spec)
    assert vectors.shape == (2, 32) and np.isfinite(vectors).all()
    base = load_model(corpus / "base7.pth").state_dict()
    tuned = model.state_dict()
    assert torch.equal(tuned["head.weight"], base["head.weight"])  # no loss reaches the LM head
    assert not torch.equal(tuned["blocks.0.att.key.weight"], base["blocks.0.att.key.weight"])


def test_an_interrupted_run_resumes_onto_the_same_curve(corpus, tmp_path, uninterrupted, monkeypatch):
    whole_dir, _ = uninterrupted
    real_save = contrastive._save

    def save_then_die(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(contrastive, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_contrastive(tiny(corpus, tmp_path))
    monkeypatch.setattr(contrastive, "_save", real_save)
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]
    assert train_contrastive(tiny(corpus, tmp_path)).steps == 6
    assert curve(read_log(tmp_path)) == curve(read_log(whole_dir))
    a = torch.load(tmp_path / "model.pth", weights_only=True)
    b = torch.load(whole_dir / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("version", ["4", "5.2"])
def test_other_versions_tune_with_eos_pooling(corpus, tmp_path, version):
    base = save_random_checkpoint(tmp_path / "b.pth", version, n_layer=1, n_embd=32, head_size=16, vocab_size=300)
    result = train_contrastive(tiny(corpus, tmp_path / "o", init_from=base, pooling="eos", eos_token=299,
                                    max_steps=2, eval_every=2))
    spec = read_embedder_spec(result.model_path)
    assert spec.pooling == "eos" and spec.eos_token == 299
    assert load_model(result.model_path).version == version


def test_settings_of_another_objective_are_refused(corpus, tmp_path, uninterrupted):
    out, _ = uninterrupted
    with pytest.raises(ValueError, match="temperature: 0.05 there, 0.1 now"):
        train_contrastive(tiny(corpus, out, temperature=0.1))
    lm = TrainConfig(data=[corpus / "train"], heldout=[corpus / "heldout"], out=out, tokenizer=corpus / "tok.json",
                     init_from=corpus / "base7.pth", ctx_len=24, batch_size=8, lr=3e-3, lr_final=3e-4,
                     warmup_steps=2, max_steps=6, eval_every=3, save_every=3, quiet=True, threads=1)
    with pytest.raises(ValueError, match="objective: 'contrastive' there, 'lm' now"):
        train(lm)


def test_a_language_model_directory_from_before_objectives_still_resumes(corpus, tmp_path):
    lm = dict(data=[corpus / "train"], heldout=[corpus / "heldout"], out=tmp_path, tokenizer=corpus / "tok.json",
              init_from=corpus / "base7.pth", ctx_len=16, batch_size=2, max_steps=2, warmup_steps=1, quiet=True,
              threads=1)
    train(TrainConfig(**lm))
    settings = json.loads((tmp_path / "settings.json").read_text())
    del settings["objective"]  # as older docstream wrote it
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    assert train(TrainConfig(**lm)).steps == 2  # accepted: the missing objective was "lm"
    with pytest.raises(ValueError, match="objective: 'lm' there, 'contrastive' now"):
        train_contrastive(TrainConfig(**{**lm, "objective": "contrastive"}))


def test_bad_settings_are_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="give the tokenizer of"):
        tiny(corpus, tmp_path, tokenizer=None)
    with pytest.raises(ValueError, match="span_min 30 is above ctx_len 24"):
        tiny(corpus, tmp_path, span_min=30)
    with pytest.raises(ValueError, match="train_contrastive"):
        train(tiny(corpus, tmp_path))
    with pytest.raises(ValueError, match="at least 2 documents"):
        train_contrastive(tiny(corpus, tmp_path / "one", data=[corpus / "train" / "doc0.txt"]))


def test_train_command_trains_an_embedder(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train", "--objective", "contrastive", "--pooling", "eos", "--data", str(corpus / "train"),
                 "--heldout", str(corpus / "heldout"), "--out", str(out), "--tokenizer", str(corpus / "tok.json"),
                 "--init-from", str(corpus / "base7.pth"), "--ctx-len", "16", "--span-min", "4", "--batch-size", "4",
                 "--max-steps", "2", "--warmup-steps", "1", "--eval-every", "2", "--eval-pairs", "4", "--quiet",
                 "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps, 8 pairs" in printed and "held-out recall@1" in printed
    assert read_embedder_spec(out / "model.pth").pooling == "eos"


def test_a_new_model_and_tokenizer_can_be_trained_as_an_embedder(corpus, tmp_path):
    result = train_contrastive(tiny(corpus, tmp_path, init_from=None, tokenizer=None, vocab_size=300, n_layer=1,
                                    n_embd=32, head_size=16, max_steps=2, eval_every=2))
    spec = read_embedder_spec(result.model_path)
    assert spec.tokenizer == str(tmp_path / "tokenizer.json") and load_tokenizer(spec.tokenizer).vocab_size == 300
    assert load_model(result.model_path).config.n_layer == 1


def test_the_tuned_model_reads_the_same_in_the_official_package(uninterrupted):
    from tests.official import run_official

    _, result = uninterrupted
    model = load_model(result.model_path)
    seqs = [[0, 17, 42, 5, 299, 100, 3, 8]]
    official = run_official(result.model_path, "7", seqs)
    logits, _ = model.forward(seqs[0], all_logits=True)
    assert (logits[0] - official[0]["all"]).abs().max().item() <= 1e-4


def test_temp_files_of_a_killed_run_are_removed_and_the_finished_run_stays(corpus, uninterrupted):
    out, result = uninterrupted
    stale = [out / ".model.embedder.json.tmp-99999", out / ".tokenizer.txt.tmp-99999"]
    for path in stale:
        path.write_text("half written")
    again = train_contrastive(tiny(corpus, out))
    assert again.steps == result.steps and not any(p.exists() for p in stale)
    assert read_embedder_spec(again.model_path).pooling == "mean"


def test_token_weights_go_with_the_embedder_and_shape_its_training(corpus, tmp_path):
    weights = np.linspace(0.1, 1.0, 300, dtype=np.float32)
    np.save(tmp_path / "w.npy", weights)
    result = train_contrastive(tiny(corpus, tmp_path / "o", token_weights=tmp_path / "w.npy", max_steps=2,
                                    eval_every=2))
    spec = read_embedder_spec(result.model_path)
    assert Path(spec.token_weights) == (tmp_path / "o" / "token_weights.npy").resolve()
    np.testing.assert_array_equal(np.load(spec.token_weights), weights)
    plain = train_contrastive(tiny(corpus, tmp_path / "p", max_steps=2, eval_every=2))
    assert read_log(tmp_path / "o")[0]["loss"] != read_log(tmp_path / "p")[0]["loss"]
    assert read_embedder_spec(plain.model_path).token_weights is None
    with pytest.raises(ValueError, match="weigh the tokens of mean pooling"):
        train_contrastive(tiny(corpus, tmp_path / "e", token_weights=tmp_path / "w.npy", pooling="eos"))
