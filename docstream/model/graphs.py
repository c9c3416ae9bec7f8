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

The recorded kernels are the eager forward's own, so results are the eager ones (the check allows float
rounding only). Each captured shape keeps its buffers and the graph's memory pool until
:func:`release_forwards`.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from docstream.model.base import Hidden, RWKVModel, tokens_checked
from docstream.model.state import State

__all__ = ["CapturedForward", "capture_forward", "cuda_capture", "release_forwards"]

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
        for name, part in self.state.parts().items():
            part.copy_(state.parts()[name])
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
    device = model.device
    tokens = torch.zeros(batch, length, dtype=torch.long, device=device)
    static = model.init_state(batch)
    try:
        replay, out = capture(lambda: _eager(model, tokens, static))
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        warnings.warn(f"could not capture the [{batch}, {length}] forward in a CUDA graph ({err}); "
                      f"running it eagerly", RuntimeWarning, stacklevel=2)
        return None
    captured = CapturedForward(tokens, static, out, replay)
    problem = _check(model, captured)
    if problem:
        warnings.warn(f"the captured [{batch}, {length}] forward does not match the eager one ({problem}); "
                      f"running it eagerly", RuntimeWarning, stacklevel=2)
        return None
    model._captured[(batch, length)] = captured
    return captured


def release_forwards(model: RWKVModel) -> None:
    """Drop every captured forward of ``model`` (their buffers and graph memory are freed)."""
    model._captured.clear()


def _check(model: RWKVModel, captured: CapturedForward) -> str | None:
    """None when a replay gives the eager forward's results on random tokens from a random state."""
    batch, length = captured.shape
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), generator=g).to(model.device)
    state = model.init_state(batch)
    for part in state.parts().values():
        part.copy_(torch.randn(part.shape, generator=g) * 0.1)
    want = _eager(model, tokens, state)
    got = captured(tokens, state)
    pairs = {"hidden": (got.last, want.last), **{f"state {name}": (got.state.parts()[name], t)
                                                 for name, t in want.state.parts().items()}}
    for name, (a, b) in pairs.items():
        scale = b.float().abs().max().clamp_min(1e-6)
        diff = ((a.float() - b.float()).abs().max() / scale).item()
        if not diff <= CHECK_TOLERANCE:  # NaN fails too
            return f"{name}: relative difference {diff:.3g}"
    return None
