"""docstream's logits against the official ``rwkv`` package on random checkpoints in BlinkDL's layout.

Each case runs one sequence whole, with ``all_logits``, token by token, split with the state carried,
and as a batch of two; every result must match the official package's within 1e-4 (cpu fp32).
"""
import pytest
import torch

from docstream.model import load_model
from docstream.testing.checkpoints import save_random_checkpoint
from tests.official import run_official

TOL = 1e-4
T = 13
SPLIT = 5

# varied widths, head sizes, feed-forward widths, low-rank widths and vocabularies
CASES = {
    "v4": dict(version="4", n_layer=3, n_embd=48, vocab_size=131, dim_ffn=136),
    "v4-wide-ffn": dict(version="4", n_layer=2, n_embd=64, vocab_size=97),
    "v5.2": dict(version="5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=113),
    "v5.2-h32": dict(version="5.2", n_layer=3, n_embd=96, head_size=32, vocab_size=89, dim_ffn=200),
    "v6": dict(version="6", n_layer=2, n_embd=64, head_size=16, vocab_size=127),
    "v6-3.5x": dict(version="6", n_layer=3, n_embd=128, head_size=32, vocab_size=101,
                    lora={"mix": 8, "decay": 12}),
    "v7": dict(version="7", n_layer=3, n_embd=64, head_size=16, vocab_size=109),
    "v7-h32": dict(version="7", n_layer=2, n_embd=128, head_size=32, vocab_size=151, dim_ffn=300,
                   lora={"decay": 12, "iclr": 10, "value": 6, "gate": 20}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    spec = dict(CASES[request.param])
    path = save_random_checkpoint(tmp_path_factory.mktemp(request.param) / "model.pth", seed=7, **spec)
    g = torch.Generator().manual_seed(11)
    seqs = torch.randint(0, spec["vocab_size"], (2, T), generator=g)
    official = run_official(path, spec["version"], seqs.tolist(), split_at=SPLIT)
    return spec, load_model(path), seqs, official


def _close(a, b):
    diff = (a - b).abs().max().item()
    assert diff <= TOL, f"max abs difference {diff:.3g} > {TOL}"


def test_version_detected(case):
    spec, model, _, _ = case
    assert model.version == spec["version"]


def test_whole_sequence(case):
    _, model, seqs, official = case
    for seq, ref in zip(seqs, official):
        logits, _ = model.forward(seq.tolist())
        _close(logits[0], ref["last"])


def test_all_logits(case):
    _, model, seqs, official = case
    logits, _ = model.forward(seqs[:1], all_logits=True)
    assert logits.shape == (1, T, model.config.vocab_size)
    _close(logits[0], official[0]["all"])


def test_token_by_token(case):
    _, model, seqs, official = case
    state, steps = None, []
    for tok in seqs[0].tolist():
        logits, state = model.forward([tok], state)
        steps.append(logits[0])
    _close(torch.stack(steps), official[0]["stepwise"])


def test_split_with_carried_state(case):
    _, model, seqs, official = case
    _, state = model.forward(seqs[:1, :SPLIT])
    logits, _ = model.forward(seqs[:1, SPLIT:], state)
    _close(logits[0], official[0]["split"])


def test_batch_of_two(case):
    _, model, seqs, official = case
    logits, state = model.forward(seqs, all_logits=True)
    for row, ref in enumerate(official):
        _close(logits[row], ref["all"])
    assert state.batch_size == 2
