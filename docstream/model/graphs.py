"""Forwards replayed from CUDA graphs: one launch instead of hundreds for a shape that recurs.

A forward of a small RWKV on a GPU is host-bound: the 169M shape launches about 700 kernels per forward,
and a Python thread that also collects results and feeds a writer launches them slower than the GPU runs
them (``bench/RESULTS.md``, "The pipeline against the model"). A CUDA graph records those launches once;
replaying it is a single call. It suits the steady shape of a run, ``[batch_size, chunk_len]``: the
forwards of every full batch of full chunks.

:func:`capture_forward` records ``model``'s hidden-state forward for one ``[B, T]`` shape into static
buffers, checks one replay against the eager forward on random input, and registers it with the model.
From then on :meth:`RWKVModel.forward_hidden <docstream.model.base.RWKVModel.forward_hidden>` replays it
for that shape when the caller has checked its token ids on the host (inside
:func:`~docstream.model.base.tokens_checked`, as :func:`~docstream.model.feed.forward_groups` does) and
the state is on the model's device; every other forward runs eagerly. Replays copy the inputs into the
static buffers and return copies of the outputs, so the results of one forward are never overwritten by
the next.

Decoding is launch-bound in the same way, one token per step: :func:`enable_step_graphs` makes
:meth:`RWKVModel.step <docstream.model.base.RWKVModel.step>` capture one graph per batch size the first
time it steps that many rows on the GPU (checked like a forward), and replay it from then on, with the
same ``inplace`` contract.

The recorded kernels are the eager ones, so results are the eager ones (the check allows float rounding
only). Each captured shape keeps its buffers and the graph's memory pool until :func:`release_forwards`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from docstream.model.base import Hidden, RWKVModel, tokens_checked
from docstream.model.state import State

__all__ = ["CapturedForward", "CapturedStep", "capture_forward", "capture_step", "cuda_capture",
           "enable_step_graphs", "release_forwards"]

#: largest relative difference between a replay and the eager forward that the check accepts
CHECK_TOLERANCE = 1e-3

#: ``capture(fn) -> (replay, outputs)``: runs ``fn`` into a graph; ``replay()`` re-runs the recorded
#: work, writing new results into the same ``outputs``
Capture = Callable[[Callable[[], Hidden]], tuple[Callable[[], None], Hidden]]


def cuda_capture(fn: Callable[[], Hidden]) -> tuple[Callable[[], None], Hidden]:
    """Record ``fn`` into a CUDA graph: two warm-up runs on a side stream (kernels built, allocator and
    library handles settled), then the capture. Returns the graph's replay and its static outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


@dataclass
class CapturedForward:
    """``forward_hidden`` of one ``[batch, length]`` shape, replayed from static buffers."""

    tokens: Tensor       # [batch, length] int64, on the model's device
    state: State         # the static input state
    out: Hidden          # the static outputs (overwritten by every replay)
    replay: Callable[[], None]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    def __call__(self, tokens: Tensor, state: State) -> Hidden:
        """The forward of ``tokens`` from ``state`` (both on the model's device; shapes as captured)."""
        self.tokens.copy_(tokens)
        _copy_state(self.state, state)
        self.replay()
        return Hidden(self.out.last.clone(), None, self.out.state.clone())


def _eager(model: RWKVModel, tokens: Tensor, state: State) -> Hidden:
    """The forward the graph records: blocks and final norm, the token check left to the caller."""
    with torch.no_grad(), tokens_checked():
        x, new_state, _ = model._trunk(tokens, state, keep_layers=False)
        return Hidden(model.ln_out(x), None, new_state)


def capture_forward(model: RWKVModel, batch: int, length: int,
                    capture: Capture = cuda_capture) -> CapturedForward | None:
    """Capture ``model``'s hidden-state forward for ``[batch, length]`` tokens and register it, after
    checking a replay against the eager forward on random tokens from a random state. Returns the
    captured forward, or None (with a warning saying why) when capturing fails or the check does, in which
    case the model keeps running that shape eagerly. ``capture`` is :func:`cuda_capture` on a GPU."""
    if batch < 1 or length < 1:
        raise ValueError(f"a captured forward needs batch >= 1 and length >= 1, got [{batch}, {length}]")
    _check_device(model, capture)
    captured = _capture(model, (batch, length), _eager, CapturedForward, _check, capture,
                        f"the [{batch}, {length}] forward", "running it eagerly")
    if captured is not None:
        model._captured[(batch, length)] = captured
    return captured


def release_forwards(model: RWKVModel) -> None:
    """Drop every captured forward and step of ``model`` (their buffers and graph memory are freed) and
    stop capturing steps."""
    model._captured.clear()
    model._captured_steps.clear()
    model._step_hook = None


@dataclass
class CapturedStep:
    """``step`` of one batch size, replayed: static tokens [batch, 1] and a static state the graph
    updates in place."""

    tokens: Tensor
    state: State
    logits: Tensor       # [batch, V] fp32, overwritten by every replay
    replay: Callable[[], None]

    def __call__(self, tokens: Tensor, state: State, inplace: bool) -> tuple[Tensor, State]:
        """``model.step(tokens, state, inplace)`` for ``tokens`` [batch, 1] on the model's device."""
        self.tokens.copy_(tokens)
        _copy_state(self.state, state)
        self.replay()
        if inplace:
            _copy_state(state, self.state)
            return self.logits.clone(), state
        return self.logits.clone(), self.state.clone()


def _step_in_place(model: RWKVModel, tokens: Tensor, state: State) -> Tensor:
    """What a step graph records: ``model.step`` in place, its token check left to the caller."""
    with tokens_checked():
        logits, _ = model._eager_step(tokens, state, inplace=True)
    return logits


def capture_step(model: RWKVModel, batch: int, capture: Capture = cuda_capture) -> CapturedStep | None:
    """Capture ``model.step`` for ``batch`` rows and register it, after checking a replay against the eager
    step on random tokens from a random state. None (with a warning) when capturing or the check fails."""
    if batch < 1:
        raise ValueError(f"a captured step needs batch >= 1, got {batch}")
    _check_device(model, capture)
    captured = _capture(model, (batch, 1), _step_in_place, CapturedStep, _check_step, capture,
                        f"the decoding step of {batch} rows", "stepping eagerly")
    if captured is not None:
        model._captured_steps[batch] = captured
    return captured


def enable_step_graphs(model: RWKVModel, capture: Capture = cuda_capture) -> None:
    """From now on ``model.step`` on the model's device captures each new batch size in a graph (checked
    as :func:`capture_step` does; a size that fails stays eager) and replays it."""
    _check_device(model, capture)

    def replayed(model: RWKVModel, tokens: Tensor, state: State, inplace: bool) -> tuple[Tensor, State] | None:
        batch = tokens.shape[0]
        if batch not in model._captured_steps:
            model._captured_steps[batch] = capture_step(model, batch, capture)  # None: this size stays eager
        captured = model._captured_steps[batch]
        return None if captured is None else captured(tokens.to(model.device), state, inplace)

    model._step_hook = replayed


def _capture(model: RWKVModel, shape: tuple[int, int], record, make, check, capture: Capture, what: str,
             fallback: str):
    """Static tokens of ``shape`` and a static state, ``capture`` of ``record(model, tokens, state)``, wrapped
    as ``make(tokens, state, outputs, replay)`` and checked by ``check(model, captured)``: the captured
    object, or None with a warning saying why when capturing or the check fails."""
    tokens = torch.zeros(*shape, dtype=torch.long, device=model.device)
    static = model.init_state(shape[0])
    try:
        replay, out = capture(lambda: record(model, tokens, static))
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        warnings.warn(f"could not capture {what} in a CUDA graph ({err}); {fallback}", RuntimeWarning, stacklevel=3)
        return None
    captured = make(tokens, static, out, replay)
    return None if _refused(check(model, captured), what, fallback) else captured


def _copy_state(dst: State, src: State) -> None:
    """Copy ``src``'s tensors into ``dst``'s (a graph's static state, or a caller's state stepped in place)."""
    for name, part in dst.parts().items():
        part.copy_(getattr(src, name))


def _refused(problem: str | None, what: str, fallback: str) -> bool:
    """Warn and return True when a replay's check found ``problem``."""
    if problem:
        warnings.warn(f"the captured {what.removeprefix('the ')} does not match the eager one ({problem}); "
                      f"{fallback}", RuntimeWarning, stacklevel=4)
    return bool(problem)


def _check_device(model: RWKVModel, capture: Capture) -> None:
    devices = {str(p.device) for p in model.placements or ()}
    if len(devices) > 1:
        raise ValueError(f"CUDA graphs record one device's work; strategy {model.strategy!r} spreads the model "
                         f"over {', '.join(sorted(devices))}. Drop the CUDA graphs or use a one-device strategy")
    if capture is cuda_capture and model.device.type != "cuda":
        raise ValueError(f"CUDA graphs need a model on a CUDA device; this one is on {model.device}. "
                         f"Load it with device='cuda'")


def _check(model: RWKVModel, captured: CapturedForward) -> str | None:
    """None when a replay gives the eager forward's results on random tokens from a random state."""
    tokens, state = _random_inputs(model, captured.shape, seed=0)
    want = _eager(model, tokens, state)
    got = captured(tokens, state)
    return _differs({"hidden": (got.last, want.last)}, got.state, want.state)


def _check_step(model: RWKVModel, captured: CapturedStep) -> str | None:
    """None when a replayed step gives the eager step's logits and state on random inputs."""
    tokens, state = _random_inputs(model, tuple(captured.tokens.shape), seed=1)
    with tokens_checked():
        want_logits, want_state = model._eager_step(tokens, state, inplace=False)
    got_logits, got_state = captured(tokens, state.clone(), inplace=False)
    return _differs({"logits": (got_logits, want_logits)}, got_state, want_state)


def _random_inputs(model: RWKVModel, shape: tuple[int, int], seed: int) -> tuple[Tensor, State]:
    """Random token ids of ``shape`` and a random state of ``shape[0]`` rows, on the model's device."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, shape, generator=g).to(model.device)
    state = model.init_state(shape[0])
    for part in state.parts().values():
        part.copy_(torch.randn(part.shape, generator=g) * 0.1)
    return tokens, state


def _differs(outputs: dict[str, tuple[Tensor, Tensor]], got: State, want: State) -> str | None:
    """The first of ``outputs`` (name -> (got, want)) or of the states' parts whose relative difference passes
    CHECK_TOLERANCE."""
    pairs = {**outputs, **{f"state {name}": (got.parts()[name], t) for name, t in want.parts().items()}}
    for name, (a, b) in pairs.items():
        scale = b.float().abs().max().clamp_min(1e-6)
        diff = ((a.float() - b.float()).abs().max() / scale).item()
        if not diff <= CHECK_TOLERANCE:  # NaN fails too
            return f"{name}: relative difference {diff:.3g}"
    return None
