"""The feeding primitive: rows of equal length batched, long sequences in chunks with the state carried."""
import numpy as np
import pytest
import torch

from docstream.model import State, build_model
from docstream.model.feed import feed_chunks, feed_rows, feed_sequence, forward_groups
from docstream.testing.checkpoints import make_random_checkpoint
from tests.stream.tables import RUN_TOL

VOCAB = 1000


@pytest.fixture(scope="module")
def model():
    # widths multiples of 16, like released models
    return build_model(make_random_checkpoint("7", n_layer=2, n_embd=32, head_size=16, vocab_size=1000, seed=3,
                                              lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16}))


def _rows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, n).tolist() for n in lengths]


def _close(got, want):
    np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), **RUN_TOL)


def test_forward_groups_batches_rows_of_equal_length_in_order(model):
    rows = _rows([3, 5, 3, 5, 2])
    states = [model.init_state(1) for _ in rows]
    batches = list(forward_groups(model, rows, states, logits="last"))
    assert [b.rows for b in batches] == [[0, 2], [1, 3], [4]]
    for b in batches:  # the same computation as one forward of the group: bitwise
        logits, state = model.forward(torch.tensor([rows[i] for i in b.rows]), State.stack([states[i] for i in b.rows]))
        assert torch.equal(b.logits, logits) and b.state.equal(state)


def test_hidden_outputs_are_the_models_hidden_states(model):
    rows = _rows([4, 4])
    (batch,) = forward_groups(model, rows, model.init_state(2), hidden=True)
    want = model.forward_hidden(torch.tensor(rows), model.init_state(2))
    assert batch.logits is None and torch.equal(batch.hidden.last, want.last) and batch.state.equal(want.state)


def test_feed_rows_carries_each_rows_state_across_chunks(model):
    rows = _rows([11, 4, 9, 1])
    seen = []
    fed = feed_rows(model, rows, [model.init_state(1)] * 4, chunk_len=4, logits="all",
                    on_batch=lambda b: seen.append(tuple(b.tokens.shape)))
    assert max(t for _, t in seen) <= 4 and sum(b * t for b, t in seen) == sum(map(len, rows))
    for row, f in zip(rows, fed):
        logits, state = model.forward(row, all_logits=True)  # whole, alone: agreement to float32 rounding
        assert f.logits.shape == (len(row), model.config.vocab_size)
        _close(f.logits, logits[0])
        for name, part in state.parts().items():
            _close(f.state.parts()[name], part)
    last = feed_rows(model, rows, model.init_state(4), chunk_len=4, logits="last")
    for f, g in zip(fed, last):  # the same forwards: bitwise
        assert torch.equal(g.logits, f.logits[-1]) and g.state.equal(f.state)


def test_feed_sequence_is_the_loop_over_chunk_len_slices(model):
    tokens = _rows([23])[0]
    out = list(feed_sequence(model, tokens, None, chunk_len=8, logits="all"))
    assert [start for start, _ in out] == [0, 8, 16]
    state = None
    for (start, fed) in out:  # the same forwards: bitwise
        logits, state = model.forward(tokens[start:start + 8], state, all_logits=True)
        assert torch.equal(fed.logits, logits[0]) and fed.state.equal(state)
    whole, _ = model.forward(tokens, all_logits=True)
    _close(torch.cat([fed.logits for _, fed in out]), whole[0])


def test_feed_chunks_takes_token_chunks_and_gives_them_back(model):
    class Chunk:
        def __init__(self, tokens):
            self.tokens = tokens

    chunks = [Chunk(t) for t in _rows([3, 2])]
    out = list(feed_chunks(model, iter(chunks), model.init_state(1)))
    assert [c for c, _ in out] == chunks and out[-1][1].logits is None


@pytest.mark.parametrize("call, message", [
    (lambda m: feed_rows(m, [[1, 2], []], [m.init_state(1)] * 2), "empty"),
    (lambda m: feed_rows(m, [[1, 2]], [m.init_state(1)] * 2), "one state per row"),
    (lambda m: feed_rows(m, [[1, 2]], [m.init_state(1)], chunk_len=0), "chunk_len"),
    (lambda m: feed_rows(m, [[1, 2]], [m.init_state(1)], logits="first"), "logits"),
    (lambda m: list(feed_sequence(m, [1, 2], chunk_len=0)), "chunk_len"),
    (lambda m: list(feed_chunks(m, [[1], []])), "empty chunk"),
])
def test_caller_mistakes_are_value_errors(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


@pytest.mark.parametrize("bad", [-1, VOCAB, VOCAB + 7])
def test_token_ids_are_checked_on_the_host_before_any_forward(model, bad, monkeypatch):
    rows = [[1, 2, 3], [4, bad, 6]]
    calls = []
    monkeypatch.setattr(model, "forward_hidden", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=f"token id {bad} is outside the model's vocabulary"):
        list(forward_groups(model, rows, model.init_state(2), hidden=True))
    assert calls == []  # rejected before the model ran


def test_forwards_of_checked_rows_never_read_the_token_tensor(model, monkeypatch):
    # the model's own range check reads tokens.min()/max(): on a GPU that waits for all queued work,
    # so forward_groups checks on the host and the model must not check again
    rows = _rows([5, 5, 3])
    want = [(b.rows, b.hidden.last.clone()) for b in forward_groups(model, rows, model.init_state(3), hidden=True)]
    reads = []
    for name in ("min", "max"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, _f=original, _n=name, **k: reads.append(_n) or _f(t, *a, **k))
    got = [(b.rows, b.hidden.last) for b in forward_groups(model, rows, model.init_state(3), hidden=True)]
    assert reads == []
    assert [r for r, _ in got] == [r for r, _ in want]
    assert all(torch.equal(g, w) for (_, g), (_, w) in zip(got, want))
    # outside forward_groups a forward still checks its tokens itself
    with pytest.raises(ValueError, match=f"token id {VOCAB} is outside"):
        model.forward_hidden(torch.tensor([[1, VOCAB]]))
    assert reads  # ... by reading them
