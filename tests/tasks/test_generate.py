"""Sampling and batched generation: determinism, batch independence, stop strings, eos, penalties."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from docstream.model import load_model
from docstream.tasks.generate import EOS_ID, SamplingConfig, feed_prompts, generate
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.tokenizer import load_tokenizer

LORA = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}
#: a byte-level vocabulary (ids 1..256) and end-of-text (0); the model has 16 ids no text decodes to
MODEL_VOCAB = 272


def byte_tokenizer_file(path: Path) -> Path:
    """A Hugging Face tokenizer JSON with one token per byte: tiny vocabulary, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))
    return path


def tiny_model_file(path: Path, seed: int = 1) -> Path:
    """A random RWKV-7 checkpoint: 2 layers, width 32, heads of 16, a vocabulary of 272."""
    return save_random_checkpoint(path, "7", n_layer=2, n_embd=32, head_size=16, vocab_size=MODEL_VOCAB,
                                  seed=seed, lora=LORA)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return load_model(tiny_model_file(root / "tiny7.pth")), load_tokenizer(byte_tokenizer_file(root / "bytes.json"))


def _run(lm, prompts, **kw):
    model, tok = lm
    seeds = kw.pop("seeds", None)
    on_token = kw.pop("on_token", None)
    config = SamplingConfig(**{"max_tokens": 24, **kw})
    return generate(model, tok, model.init_state(len(prompts)), [tok.encode(p) for p in prompts], config,
                    on_token=on_token, seeds=seeds)


def test_greedy_is_the_argmax_chain(lm):
    model, tok = lm
    g = _run(lm, ["Once upon a time"], temperature=0, max_tokens=10)[0]
    logits, state = model.forward(tok.encode("Once upon a time"))
    expected = []
    for _ in range(10):
        logits[:, tok.vocab_size:] = float("-inf")
        token = int(torch.argmax(logits[0]))
        expected.append(token)
        logits, state = model.forward([token], state)
    assert g.tokens == expected and g.finish_reason == "length" and g.text == tok.decode(expected)


def test_same_seed_same_text_other_seed_other_text(lm):
    a = _run(lm, ["The river"], temperature=1.0, seed=7)[0]
    b = _run(lm, ["The river"], temperature=1.0, seed=7)[0]
    c = _run(lm, ["The river"], temperature=1.0, seed=8)[0]
    assert a.tokens == b.tokens and a.text == b.text and a.seed == 7
    assert a.tokens != c.tokens


def test_batch_equals_one_by_one(lm):
    prompts = ["Hello", "A much longer prompt than the first", "x", "Hello"]
    free = _run(lm, prompts, temperature=0.9, top_p=0.9, seed=3)
    longest = max(range(len(prompts)), key=lambda i: len(free[i].text))
    stop = free[longest].text[3:5]
    batch = _run(lm, prompts, temperature=0.9, top_p=0.9, seed=3, stop=[stop])
    alone = [_run(lm, [p], temperature=0.9, top_p=0.9, seeds=[3 + i], stop=[stop])[0] for i, p in enumerate(prompts)]
    assert [(g.tokens, g.text, g.finish_reason) for g in batch] == [(g.tokens, g.text, g.finish_reason) for g in alone]
    assert batch[longest].finish_reason == "stop"
    assert len({len(g.tokens) for g in batch}) > 1  # rows left the batch at different steps
    assert batch[0].tokens != batch[3].tokens  # same prompt, its own seed


def test_stop_string_is_cut(lm):
    free = _run(lm, ["Stop here"], temperature=1.0, seed=11)[0]
    stop = free.text[6:8]
    cut = _run(lm, ["Stop here"], temperature=1.0, seed=11, stop=[stop, "never-appears"])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[:free.text.find(stop)]
    assert cut.tokens == free.tokens[:len(cut.tokens)]
    assert stop in tok_decode(lm, cut.tokens)


def tok_decode(lm, tokens):
    return lm[1].decode(tokens)


def test_streamed_text_adds_up(lm):
    free = _run(lm, ["Stream"], temperature=1.0, seed=2)[0]
    stop = free.text[10:13]
    for stops in ([], [stop]):
        streamed: list[tuple[int, str]] = []
        g = _run(lm, ["Stream"], temperature=1.0, seed=2, stop=stops,
                 on_token=lambda row, token, text, into=streamed: into.append((token, text)))[0]
        assert "".join(text for _, text in streamed) == g.text and [t for t, _ in streamed] == g.tokens


def test_eos_ends_a_row(lm):
    model, tok = lm

    class EosOnThirdStep:
        """The model, except that the third decoding step makes end-of-text certain."""

        def __init__(self):
            self.calls = 0
            self.config = model.config

        def _count(self, logits):
            self.calls += 1
            if self.calls == 3:
                logits[..., EOS_ID] = 1e9
            return logits

        def forward(self, tokens, state=None, all_logits=False):
            logits, state = model.forward(tokens, state, all_logits)
            return self._count(logits), state

        def step(self, tokens, state=None, inplace=False):
            logits, state = model.step(tokens, state, inplace)
            return self._count(logits), state

    g = generate(EosOnThirdStep(), tok, model.init_state(1), [tok.encode("Hi")], SamplingConfig(max_tokens=20))[0]
    assert g.finish_reason == "eos" and len(g.tokens) == 2 and EOS_ID not in g.tokens


def test_penalties_and_top_k(lm):
    repeats = _run(lm, ["aaaa"], temperature=0, max_tokens=40)[0]
    penalized = _run(lm, ["aaaa"], temperature=0, max_tokens=40, frequency_penalty=1e4)[0]
    presence = _run(lm, ["aaaa"], temperature=0, max_tokens=40, presence_penalty=1e4, penalty_decay=0.5)[0]
    assert len(set(penalized.tokens)) == len(penalized.tokens)
    assert len(set(presence.tokens)) == len(presence.tokens)
    assert len(set(repeats.tokens)) < len(repeats.tokens)  # a random model loops when greedy
    top1 = _run(lm, ["aaaa"], temperature=1.0, top_k=1, max_tokens=40, seed=5)[0]
    assert top1.tokens == repeats.tokens


def test_undecodable_ids_are_never_sampled(lm):
    tok = lm[1]
    gs = _run(lm, ["hot", "hotter"], temperature=5.0, max_tokens=40, seed=1)
    assert all(0 < t < tok.vocab_size for g in gs for t in g.tokens)


def test_bad_inputs(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="2 prompts for a state of 1 rows"):
        generate(model, tok, model.init_state(1), [[5], [6]], SamplingConfig())
    with pytest.raises(ValueError, match=r"rows \[1\] are empty"):
        generate(model, tok, model.init_state(2), [[5], []], SamplingConfig())
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        SamplingConfig(stop=[""])
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)


def test_long_prompts_are_fed_in_chunks(lm, monkeypatch):
    model, tok = lm
    prompts = [tok.encode("a long prompt, longer than one chunk of the feed"), tok.encode("short"), [5] * 9]
    whole_logits, whole_state = feed_prompts(model, model.init_state(3), prompts, chunk_len=10_000)
    lengths = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda tokens, *a, **k: lengths.append(tokens.shape[1]) or forward(
        tokens, *a, **k))
    logits, state = feed_prompts(model, model.init_state(3), prompts, chunk_len=8)
    assert max(lengths) == 8  # memory bounded by the chunk: no forward over 8 tokens
    # other cuts and batch companions: agreement to float32 rounding (tests/stream/tables.py RUN_TOL)
    np.testing.assert_allclose(logits.numpy(), whole_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.wkv.numpy(), whole_state.wkv.numpy(), rtol=1e-4, atol=1e-4)
