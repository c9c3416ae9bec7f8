"""Captured forwards: the plumbing around a CUDA graph (static buffers in, copies out, which forwards
replay), checked on the CPU with a stand-in capture that re-runs the recorded function into the same
output tensors, as a graph replay does. The real CUDA capture is checked by tests/model/test_gpu.py."""
import warnings

import numpy as np
import pytest
import torch

from docstream.model import build_model
from docstream.model.base import tokens_checked
from docstream.model.feed import forward_groups
from docstream.model.graphs import capture_forward, release_forwards
from docstream.testing.checkpoints import make_random_checkpoint

VOCAB = 300


def replay_into_outputs(fn):
    """A stand-in for cuda_capture: ``replay`` runs ``fn`` again and writes its results into the tensors
    the capture returned (a graph's static outputs), so a caller that kept them sees them overwritten."""
    out = fn()
    calls = []

    def replay():
        calls.append(1)
        new = fn()
        out.last.copy_(new.last)
        for name, part in out.state.parts().items():
            part.copy_(new.state.parts()[name])

    replay.calls = calls
    return replay, out


@pytest.fixture
def model():
    return build_model(make_random_checkpoint("7", n_layer=2, n_embd=32, head_size=16, vocab_size=VOCAB, seed=1,
                                              lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16}))


def _inputs(model, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    state = model.init_state(batch)
    for part in state.parts().values():
        part.copy_(torch.randn(part.shape, generator=g) * 0.1)
    return torch.randint(0, VOCAB, (batch, length), generator=g), state


def _same(a, b):
    assert torch.equal(a.last, b.last) and a.state.equal(b.state)


def test_a_captured_shape_replays_and_gives_the_eager_results(model):
    eager = {seed: model.forward_hidden(*_inputs(model, 3, 8, seed)) for seed in (1, 2)}
    captured = capture_forward(model, 3, 8, capture=replay_into_outputs)
    assert captured is not None and captured.shape == (3, 8)
    calls = len(captured.replay.calls)  # the capture's own check replays once
    with tokens_checked():
        first = model.forward_hidden(*_inputs(model, 3, 8, 1))
        second = model.forward_hidden(*_inputs(model, 3, 8, 2))
    assert len(captured.replay.calls) == calls + 2
    # the first result is a copy: the second replay did not overwrite it
    _same(first, eager[1])
    _same(second, eager[2])


def test_other_shapes_unchecked_tokens_and_no_state_run_eagerly(model):
    captured = capture_forward(model, 2, 5, capture=replay_into_outputs)
    calls = len(captured.replay.calls)
    tokens, state = _inputs(model, 2, 5, 3)
    other_tokens, other_state = _inputs(model, 2, 6, 4)
    with tokens_checked():
        model.forward_hidden(other_tokens, other_state)          # another length
        model.forward_hidden(tokens, None)                       # no state given
        model.forward_hidden(tokens, state, all_layers=True)     # per-layer outputs asked for
    model.forward_hidden(tokens, state)                          # ids not checked by the caller
    assert len(captured.replay.calls) == calls


def test_the_engine_path_gives_the_same_batches_with_a_captured_shape(model):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, VOCAB, n).tolist() for n in (6, 6, 4, 6)]
    states = [_inputs(model, 1, 1, seed)[1] for seed in range(4)]
    want = list(forward_groups(model, rows, states, hidden=True))
    captured = capture_forward(model, 3, 6, capture=replay_into_outputs)
    calls = len(captured.replay.calls)
    got = list(forward_groups(model, rows, states, hidden=True))
    assert len(captured.replay.calls) == calls + 1  # the three rows of length 6; the 4-token row eagerly
    assert [b.rows for b in got] == [b.rows for b in want]
    for g, w in zip(got, want):
        _same(g.hidden, w.hidden)


def test_a_replay_that_differs_from_the_eager_forward_is_not_used(model):
    def wrong(fn):
        replay, out = replay_into_outputs(fn)

        def off():
            replay()
            out.last.add_(1.0)

        return off, out

    with pytest.warns(RuntimeWarning, match=r"does not match the eager one \(hidden: relative difference"):
        assert capture_forward(model, 2, 4, capture=wrong) is None
    assert model._captured == {}


def test_a_capture_that_fails_leaves_the_model_eager(model):
    def failing(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.warns(RuntimeWarning, match="could not capture the \\[2, 4\\] forward.*not permitted"):
        assert capture_forward(model, 2, 4, capture=failing) is None
    assert model._captured == {}


def test_changing_the_backend_or_releasing_drops_captured_forwards(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capture_forward(model, 1, 4, capture=replay_into_outputs)
    assert (1, 4) in model._captured
    model.set_backend("torch")
    assert model._captured == {}
    capture_forward(model, 1, 4, capture=replay_into_outputs)
    release_forwards(model)
    assert model._captured == {}


def test_bad_shapes_are_value_errors(model):
    with pytest.raises(ValueError, match=r"batch >= 1 and length >= 1, got \[0, 4\]"):
        capture_forward(model, 0, 4, capture=replay_into_outputs)


def replay_step_into_outputs(fn):
    """The step's stand-in capture: ``fn`` updates the static state in place and returns logits; a replay
    runs it again and writes the logits into the tensor the capture returned."""
    logits = fn()
    calls = []

    def replay():
        calls.append(1)
        logits.copy_(fn())

    replay.calls = calls
    return replay, logits


def _step_inputs(model, batch, seed):
    tokens, state = _inputs(model, batch, 1, seed)
    return tokens[:, 0], state


def test_captured_steps_give_the_eager_steps_and_keep_the_inplace_contract(model):
    from docstream.model.graphs import enable_step_graphs

    runs = {}
    for graphs in (False, True):
        if graphs:
            enable_step_graphs(model, capture=replay_step_into_outputs)
        tokens, state = _step_inputs(model, 3, 9)
        out = []
        for t in range(4):
            logits, new = model.step((tokens + t) % VOCAB, state, inplace=True)
            assert new is state  # in place: the same object, its own tensors updated
            out.append(logits)
        logits, fresh = model.step(tokens, state)  # not in place: the state passed in is left alone
        assert fresh is not state and not fresh.equal(state)
        runs[graphs] = (out, logits, state, fresh)
    assert set(model._captured_steps) == {3}
    captured = model._captured_steps[3]
    assert len(captured.replay.calls) == 1 + 5  # the capture's check, then every step
    (eager_out, eager_logits, eager_state, eager_fresh), (out, logits, state, fresh) = runs[False], runs[True]
    for got, want in zip(out, eager_out):  # copies: a later step did not overwrite an earlier one's logits
        assert torch.equal(got, want)
    assert torch.equal(logits, eager_logits) and state.equal(eager_state) and fresh.equal(eager_fresh)


def test_each_batch_size_gets_its_own_step_and_a_failed_one_stays_eager(model):
    from docstream.model.graphs import enable_step_graphs

    sizes = []

    def only_two_rows(fn):
        sizes.append(1)
        replay, logits = replay_step_into_outputs(fn)
        if logits.shape[0] != 2:
            raise RuntimeError("capture refused")
        return replay, logits

    enable_step_graphs(model, capture=only_two_rows)
    for batch in (2, 3, 2, 3):
        tokens, state = _step_inputs(model, batch, batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            logits, _ = model.step(tokens, state)
        want, _ = model._eager_step(tokens[:, None], state, inplace=False)
        assert torch.equal(logits, want)
    assert len(sizes) == 2  # each batch size is captured (or tried) once
    assert model._captured_steps[3] is None and model._captured_steps[2] is not None
    release_forwards(model)
    assert model._captured_steps == {} and model._step_hook is None


def test_a_step_with_bad_ids_is_refused_before_the_graph_runs(model):
    from docstream.model.graphs import enable_step_graphs

    enable_step_graphs(model, capture=replay_step_into_outputs)
    _, state = _step_inputs(model, 2, 1)
    with pytest.raises(ValueError, match=f"token id {VOCAB} is outside"):
        model.step(torch.tensor([1, VOCAB]), state)


def test_cuda_graphs_on_a_cpu_model_are_refused_by_name(model):
    from docstream.model.graphs import enable_step_graphs

    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device; this one is on cpu"):
        enable_step_graphs(model)
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        capture_forward(model, 2, 4)
