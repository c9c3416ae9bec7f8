"""What every RWKV version shares: embedding, residual blocks, output head, the forward contract.

Module and parameter names follow BlinkDL's checkpoints (``emb.weight``, ``blocks.0.ln0.weight``,
``blocks.{i}.att.key.weight``, ``ln_out.weight``, ``head.weight``, ...), so ``state_dict()`` is the
checkpoint layout and a checkpoint loads with ``load_state_dict`` as it is. Each version file
(``v4.py``, ``v5.py``, ``v6.py``, ``v7.py``) provides the time mix and channel mix of a block.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from docstream.kernels.dispatch import check_backend, linear_rows_kernel
from docstream.model.config import ModelConfig
from docstream.model.state import State

#: matrix products get their row count padded with zero rows up to a multiple of this: the BLAS behind
#: torch computes the rows of a short remainder block with other kernels, so without padding a row's
#: result depends on how many rows share the product. Padded, on many CPUs (the AVX2 machines docstream
#: is tested on, with MKL or OpenBLAS) every row is bitwise the same whatever the batch size, chunk
#: length or position in the batch, at the cost of < 8 rows. It is not a guarantee: on AVX-512 and ARM
#: the BLAS also picks other kernels (blockings, summation orders) for other row counts, and torch's
#: vectorized loops and reductions may too, so rows differ there in the last bits (1.9e-6 seen on an
#: AVX-512 EPYC). What docstream promises on every CPU is agreement to float32 rounding (README,
#: "Reproducibility"); nothing -- resume, the Ray engine -- relies on bitwise equality across batchings.
GEMM_ROW_MULTIPLE = 8
#: :meth:`RWKVModel.step` (single-token decoding) trades that row stability for speed on products of
#: at most this many rows. On CPU in fp32 they take the compiled few-row kernel (``linear_rows``, which
#: reads every weight once per step: 1.1-1.7x faster than MKL at 1-64 rows, for ``nn.Linear`` weights and
#: the [in, out] LoRA matrices alike); elsewhere one row takes the matrix-vector kernel and a few rows
#: the product computed transposed (weights as the long side), which MKL runs ~1.7x faster. Results
#: then match the stable path to float tolerance (~1e-6) and may differ in the last bits with the batch
#: size.
STEP_MAX_ROWS = 64
#: inside :meth:`RWKVModel.step`: the compiled few-row product its matrices take, resolved once per
#: step (None: torch's products); :data:`_NOT_STEPPING` outside a step
_NOT_STEPPING = object()
_STEP_KERNEL: contextvars.ContextVar = contextvars.ContextVar("docstream_step_kernel", default=_NOT_STEPPING)
#: set (by :func:`tokens_checked`) while a caller that has range-checked its token ids on the host runs
#: forwards: the model then does not check them again. On a GPU that check reads the tensor's min and
#: max, which waits for all the work queued before it (one host sync per forward, so the host could
#: never launch a forward while the previous one runs).
_TOKENS_CHECKED: contextvars.ContextVar = contextvars.ContextVar("docstream_tokens_checked", default=False)


@contextlib.contextmanager
def tokens_checked() -> Iterator[None]:
    """Forwards inside this block trust that their token ids are in the vocabulary (checked by the
    caller with :func:`check_token_range`, on the host): no device sync per forward."""
    reset = _TOKENS_CHECKED.set(True)
    try:
        yield
    finally:
        _TOKENS_CHECKED.reset(reset)


def check_token_range(lo: int, hi: int, vocab_size: int) -> None:
    """``ValueError`` naming the first id outside ``[0, vocab_size)`` of ids spanning ``lo..hi``."""
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the model's vocabulary [0, {vocab_size})")


def matmul(x: Tensor, w: Tensor) -> Tensor:
    """x [..., in] @ w [in, out] (w may be a transposed view), rows padded (see GEMM_ROW_MULTIPLE)."""
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    kernel = _STEP_KERNEL.get()
    if kernel is not _NOT_STEPPING and rows <= STEP_MAX_ROWS:
        weight = w.T  # [out, in], as nn.Linear stores it
        if kernel is not None and flat.is_cpu and flat.dtype == torch.float32:  # (a strategy mixes devices)
            out = kernel(flat, weight)
        else:
            out = flat @ w if rows == 1 else (weight @ flat.T).T
    else:
        out = (pad_rows(flat) @ w)[:rows]
    return out.reshape(*x.shape[:-1], w.shape[1])


def pad_rows(flat: Tensor) -> Tensor:
    """``flat`` [rows, K] with zero rows appended up to a multiple of :data:`GEMM_ROW_MULTIPLE` (the
    product's first ``rows`` rows are then the same whatever the row count)."""
    extra = -flat.shape[0] % GEMM_ROW_MULTIPLE
    return torch.cat((flat, flat.new_zeros(extra, flat.shape[1]))) if extra else flat


def _preview(value: object, limit: int = 60) -> str:
    """A short repr of a bad argument, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Linear(nn.Linear):
    """``nn.Linear`` without bias whose results do not depend on how many rows it is given."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return matmul(x, self.weight.T)


def squared_relu(x: Tensor) -> Tensor:
    """relu(x)^2, computed in place on relu's fresh output (3x faster than ``.square()`` on CPU)."""
    r = torch.relu(x)
    return r * r if r.requires_grad else r.mul_(r)  # autograd keeps relu's output for its backward


#: the parameters RWKV-5.2 and RWKV-6 keep in fp32 whatever the model's dtype (as the official package does)
HEAD_FP32_PARAMS = ("att.time_decay", "att.time_faaaa", "att.ln_x.weight", "att.ln_x.bias")


def count_layers(sd: dict[str, Tensor]) -> int:
    """Number of blocks in a BlinkDL state dict."""
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))


def common_shapes(sd: dict[str, Tensor]) -> dict[str, int]:
    """The sizes every version reads the same way from a BlinkDL state dict: layers, width, vocabulary,
    and the attention and feed-forward widths (from the first block's key projections)."""
    v, c = sd["emb.weight"].shape
    return dict(n_layer=count_layers(sd), n_embd=c, vocab_size=v, dim_att=sd["blocks.0.att.key.weight"].shape[0],
                dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0])


def mix_param(n: int) -> nn.Parameter:
    """A [1, 1, n] token-shift mixing coefficient, the shape BlinkDL checkpoints store."""
    return nn.Parameter(torch.empty(1, 1, n))


def token_shift(xx: Tensor, prev: Tensor) -> Tensor:
    """The sequence shifted one step right, ``prev`` [B, C] filling position 0. xx: [B, T, C].
    For one token that is ``prev`` itself (a view: callers only read it)."""
    if xx.shape[1] == 1:
        return prev.unsqueeze(1)
    return torch.cat((prev.unsqueeze(1), xx[:, :-1]), dim=1)


def group_norm_heads(y: Tensor, norm: nn.GroupNorm) -> Tensor:
    """Per-head group norm of y: [B, T, H, N] in fp32, returned as [B, T, H*N]."""
    b, t, h, n = y.shape
    out = F.group_norm(y.reshape(b * t, h * n).float(), h, norm.weight.float(), norm.bias.float(), norm.eps)
    return out.view(b, t, h * n)


class Block(nn.Module):
    """One residual block: ``x + att(ln1(x))`` then ``x + ffn(ln2(x))`` (block 0 first applies ln0)."""

    def __init__(self, layer_id: int, n_embd: int, att: nn.Module, ffn: nn.Module):
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.att = att
        self.ffn = ffn

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor, Tensor], v_first: Tensor | None,
                backend: str, wkv_out: Tensor | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], Tensor | None]:
        """``wkv_out``: where the new WKV state goes (a layer's slice of the new stacked state), or None."""
        att_shift, wkv, ffn_shift = state
        xx = self.ln1(x)
        out, wkv, v_first = self.att(xx, att_shift, wkv, v_first, backend, wkv_out)
        x = x + out
        xx2 = self.ln2(x)
        x = x + self.ffn(xx2, ffn_shift)
        return x, (xx[:, -1], wkv, xx2[:, -1]), v_first


@dataclass(frozen=True)
class Hidden:
    """Hidden states of a forward pass.

    ``last``: [B, T, C] final-layer output per position (after ``ln_out``, what the head reads);
    ``layers``: per-layer residual stream [B, T, C] after each block, when asked for;
    ``state``: the state after the last token.
    """

    last: Tensor
    layers: tuple[Tensor, ...] | None
    state: State


class RWKVModel(nn.Module):
    """Base class of the per-version models. Use :func:`docstream.model.load_model` to build one."""

    version: ClassVar[str]
    #: parameter name suffixes that stay fp32 whatever the model dtype (decays, bonuses, group norms)
    fp32_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.version != self.version:
            raise ValueError(f"{type(self).__name__} needs a version {self.version} config, got {config.version}")
        self.config = config
        self.backend = "auto"
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(
            Block(i, config.n_embd, self.make_att(i), self.make_ffn(i)) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = Linear(config.n_embd, config.vocab_size)
        #: hidden-state forwards replayed from CUDA graphs, by [B, T] (docstream.model.graphs)
        self._captured: dict[tuple[int, int], object] = {}
        #: decoding steps replayed from CUDA graphs, by batch size, and the function that replays (and first
        #: captures) them: ``hook(model, tokens, state, inplace)`` -> the step's result, or None to step
        #: eagerly (None: every step is eager; docstream.model.graphs.enable_step_graphs sets it)
        self._captured_steps: dict[int, object] = {}
        self._step_hook = None
        #: where each place runs (the blocks, then ln_out and the head) when a strategy string spreads the
        #: model over devices and dtypes (docstream.model.strategy); None: everything on self.device in
        #: self.dtype. The state stays on the first place's device, in its dtype.
        self.placements = None
        self.strategy: str | None = None  # the strategy string that made self.placements

    # -- per-version hooks -------------------------------------------------------------------------
    @classmethod
    def config_from_state_dict(cls, sd: dict[str, Tensor]) -> ModelConfig:
        raise NotImplementedError

    def make_att(self, layer_id: int) -> nn.Module:
        raise NotImplementedError

    def make_ffn(self, layer_id: int) -> nn.Module:
        raise NotImplementedError

    def wkv_shape(self) -> tuple[int, ...]:
        """Shape of one layer's WKV state for one sequence."""
        c = self.config
        return (3, c.dim_att) if c.version == "4" else (c.n_head, c.head_size, c.head_size)

    def initial_wkv(self, batch_size: int, device: torch.device) -> Tensor:
        """[B, L, ...] initial WKV state (zeros; RWKV-4 overrides the exponent part)."""
        return torch.zeros(batch_size, self.config.n_layer, *self.wkv_shape(), device=device)

    # -- public API ----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].ln1.weight.dtype  # the first place's (the embedding may be int8)

    @property
    def device(self) -> torch.device:
        return self.blocks[0].ln1.weight.device

    def set_backend(self, backend: str) -> RWKVModel:
        """Choose the WKV implementation: "auto", "cuda", "cpu" or "torch"."""
        self.backend = check_backend(backend)
        for module in self.modules():  # int8 matrices (docstream.model.quant) run their own kernels
            if module is not self and hasattr(module, "set_backend"):
                module.set_backend(self.backend)
        self._captured.clear()  # recorded with the previous backend's kernels
        self._captured_steps.clear()
        return self

    def init_state(self, batch_size: int = 1) -> State:
        """The state before any token, for ``batch_size`` sequences."""
        c = self.config
        shift = torch.zeros(batch_size, c.n_layer, c.n_embd, dtype=self.dtype, device=self.device)
        return State(c.version, shift, self.initial_wkv(batch_size, self.device), shift.clone())

    @torch.no_grad()
    def forward(self, tokens: Tensor | Sequence[int], state: State | None = None,
                all_logits: bool = False) -> tuple[Tensor, State]:
        """Run ``tokens`` [B, T] (a list of ints is one sequence) from ``state`` (None: initial).

        Returns fp32 logits, [B, V] for the last position or [B, T, V] with ``all_logits``, and the
        new state. The state passed in is not modified.
        """
        x, new_state, _ = self._trunk(tokens, state, keep_layers=False)
        return self._home(self.head(self.ln_out(x if all_logits else x[:, -1])).float()), new_state

    @torch.no_grad()
    def step(self, tokens: Tensor | Sequence[int], state: State | None = None,
             inplace: bool = False) -> tuple[Tensor, State]:
        """One decoding step: ``tokens`` [B] (or [B, 1]), one new token per sequence -> logits [B, V].

        Same contract as :meth:`forward`, with the matrix kernels fastest for a few rows (see
        STEP_MAX_ROWS): results agree with :meth:`forward` to float tolerance, not bitwise.

        ``inplace=True`` writes the new state into ``state``'s own tensors and returns that same
        object, for decoding loops that drop the old state anyway: no new state is allocated per
        step (at batch 16 of the 169M RWKV-7 shape a fresh 38 MB state costs ~10 ms of page faults
        per step). ``state`` must then already be on the model's device and dtype.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(1)
        if tokens.dim() != 2 or tokens.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, [B] or [B, 1]; got shape {tuple(tokens.shape)}")
        if inplace and state is not None and (state.device != self.device or state.dtype != self.dtype):
            raise ValueError(f"step(inplace=True) needs a state on the model's device and dtype "
                             f"({self.device}, {self.dtype}); got {state.device}, {state.dtype}. "
                             f"Move it first with state.to(...)")
        if self._step_hook is not None and state is not None and state.device == self.device:
            self._check_state(state, tokens.shape[0])
            check_token_range(int(tokens.min()), int(tokens.max()), self.config.vocab_size)  # host ids: no sync
            replayed = self._step_hook(self, tokens, state, inplace)
            if replayed is not None:
                return replayed
        return self._eager_step(tokens, state, inplace)

    def _eager_step(self, tokens: Tensor, state: State | None, inplace: bool) -> tuple[Tensor, State]:
        reset = _STEP_KERNEL.set(self._step_kernel())
        try:
            x, new_state, _ = self._trunk(tokens, state, keep_layers=False, into=state if inplace else None)
            return self._home(self.head(self.ln_out(x[:, -1])).float()), new_state  # what forward returns
        finally:
            _STEP_KERNEL.reset(reset)

    def _step_kernel(self):
        """The compiled few-row product of fp32 CPU layers (see :data:`_STEP_KERNEL`), or None."""
        if self.placements is None:
            return linear_rows_kernel(self.backend, self.device, self.dtype)
        if any(p.device.type == "cpu" and p.dtype == "fp32" for p in self.placements):
            return linear_rows_kernel(self.backend, torch.device("cpu"), torch.float32)
        return None

    def forward_train(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """The differentiable forward used by training: logits [B, T, V] for every position and the
        new state, with autograd recording (the WKV ops take their compiled backward where one exists,
        else the PyTorch reference). Inference should use :meth:`forward`, which records nothing."""
        x, new_state, _ = self._trunk(tokens, state, keep_layers=False)
        return self.head(self.ln_out(x)), new_state

    def hidden_train(self, tokens: Tensor) -> Tensor:
        """Final hidden states [B, T, C] (after ``ln_out``) of ``tokens`` [B, T] from the initial state,
        recorded by autograd: what an embedder is trained on (:mod:`docstream.model.embedding`)."""
        x, _, _ = self._trunk(tokens, None, keep_layers=False)
        return self.ln_out(x)

    @torch.no_grad()
    def forward_hidden(self, tokens: Tensor | Sequence[int], state: State | None = None,
                       all_layers: bool = False) -> Hidden:
        """Like :meth:`forward` but returns hidden states instead of logits (see :class:`Hidden`).

        A shape captured with :func:`docstream.model.graphs.capture_forward` is replayed from its CUDA graph
        when the caller has checked the token ids (:func:`tokens_checked`) and the state is on the model's
        device: the same results, one launch."""
        if self._captured and not all_layers and state is not None and isinstance(tokens, Tensor) \
                and _TOKENS_CHECKED.get():
            captured = self._captured.get(tuple(tokens.shape))
            if captured is not None and tokens.device == self.device and state.device == self.device:
                self._check_state(state, tokens.shape[0])
                return captured(tokens, state)
        x, new_state, layers = self._trunk(tokens, state, keep_layers=all_layers)
        layers = [self._home(t, self.dtype) for t in layers]
        return Hidden(self._home(self.ln_out(x), self.dtype), tuple(layers) if all_layers else None, new_state)

    # -- internals -----------------------------------------------------------------------------
    def _home(self, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """An output computed at another place of a strategy, brought to the model's device (and ``dtype``):
        outputs live where the state does, whatever the strategy."""
        if self.placements is None:
            return t
        return t.to(self.device, dtype if dtype is not None else t.dtype)

    def _as_batch(self, tokens: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> Tensor:
        """``tokens`` as a LongTensor [B, T] on the model's device: a tensor, a list of ints (one
        sequence) or a list of equal-length lists of ints ([B, T])."""
        if not isinstance(tokens, Tensor):
            if not isinstance(tokens, (list, tuple)) and not hasattr(tokens, "__array__"):
                tokens = list(tokens)  # a range, a generator
            try:
                tokens = torch.as_tensor(tokens)
            except (TypeError, ValueError, RuntimeError, OverflowError) as err:
                raise ValueError(f"tokens must be a [B, T] tensor, a list of ints or a list of equal-length "
                                 f"lists of ints; got {_preview(tokens)} ({err})") from err
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must be a non-empty [B, T] tensor, list of ints or list of equal-length "
                             f"lists of ints, got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokens must be integers, got {tokens.dtype}")
        if not _TOKENS_CHECKED.get():
            check_token_range(int(tokens.min()), int(tokens.max()), self.config.vocab_size)
        return tokens.to(self.device, torch.long)

    def _check_state(self, state: State, batch_size: int) -> None:
        expect = self.init_state_shapes(batch_size)
        got = (state.version, tuple(state.att_shift.shape), tuple(state.wkv.shape))
        if got != expect:
            raise ValueError(f"state does not fit this model: got version {got[0]}, att_shift {got[1]}, "
                             f"wkv {got[2]}; expected version {expect[0]}, {expect[1]}, {expect[2]}")

    def init_state_shapes(self, batch_size: int) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
        c = self.config
        return c.version, (batch_size, c.n_layer, c.n_embd), (batch_size, c.n_layer, *self.wkv_shape())

    def _trunk(self, tokens: Tensor | Sequence[int], state: State | None, keep_layers: bool,
               into: State | None = None) -> tuple[Tensor, State, list[Tensor]]:
        """The blocks: (last layer's output [B, T, C], new state, per-layer outputs if ``keep_layers``).
        ``into``: write the new state into this state's tensors (``state`` itself for in-place steps)."""
        tokens = self._as_batch(tokens)
        if state is None:
            state = self.init_state(tokens.shape[0])
        else:
            self._check_state(state, tokens.shape[0])
            state = state.to(self.device, self.dtype)
        x = self.blocks[0].ln0(self.emb(tokens))
        # Without autograd, every layer writes its new state straight into its slice of one stacked
        # state: ``into``, or a fresh one (no per-layer tensors to stack afterwards). With autograd
        # the per-layer states are stacked, so that gradients flow through them.
        if into is None and not torch.is_grad_enabled():
            into = State(self.config.version, *(torch.empty(t.shape, dtype=t.dtype, device=t.device)
                                                for t in (state.att_shift, state.wkv, state.ffn_shift)))
        placements = self.placements
        if placements is not None and into is None:
            raise ValueError("a model loaded with a strategy is for inference (forward, step); load the "
                             "checkpoint without one to train it")
        layer_states, layers = [], []
        v_first = None
        every = self.config.rescale_every
        for i, block in enumerate(self.blocks):
            layer_state, wkv_out = state.layer(i), None if into is None else into.wkv[:, i]
            if placements is not None:
                x, v_first, layer_state, wkv_out = _enter(placements[i], x, v_first, layer_state, wkv_out)
            x, layer_state, v_first = block(x, layer_state, v_first, self.backend, wkv_out)
            if into is not None:  # the block has read this layer's old shifts; now overwrite them
                into.att_shift[:, i] = layer_state[0]
                into.ffn_shift[:, i] = layer_state[2]
                if wkv_out is None:  # computed on another device than the state's
                    into.wkv[:, i] = layer_state[1]
            else:
                layer_states.append(layer_state)
            if every and (i + 1) % every == 0:
                x = x / 2
            if keep_layers:
                layers.append(x)
        if placements is not None:  # ln_out and the head have a place of their own
            x = x.to(placements[-1].device, placements[-1].torch_dtype)
        if into is not None:
            return x, into, layers
        return x, State.from_layers(self.config.version, layer_states), layers


def _enter(place, x: Tensor, v_first: Tensor | None, layer_state: tuple[Tensor, Tensor, Tensor],
           wkv_out: Tensor | None) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor, Tensor], Tensor | None]:
    """The inputs of a block moved to its place (a :class:`docstream.model.strategy.Placement`): the
    residual stream, the value residual and the layer's state cross devices and dtypes here. ``wkv_out``
    is dropped when it lives on another device (the caller then copies the new WKV state back)."""
    device, dtype = place.device, place.torch_dtype
    if x.device != device or x.dtype != dtype:
        x = x.to(device, dtype)
        v_first = None if v_first is None else v_first.to(device, dtype)
    att, wkv, ffn = layer_state
    if wkv.device != device or att.dtype != dtype:
        layer_state = (att.to(device, dtype), wkv.to(device), ffn.to(device, dtype))
    if wkv_out is not None and wkv_out.device != device:
        wkv_out = None
    return x, v_first, layer_state, wkv_out
