"""Sampling and batched text generation from recurrent states.

:func:`generate` continues a batch of states: each row's prompt is fed from its own state, then every
row is decoded together, one token per step, as a single batch; rows that finish leave the batch.
Every row samples with its own ``torch.Generator`` seeded with ``seed + row`` (or a seed given per
row), on its own logits only, and the model's results do not depend on batch companions
(``docstream.model.base.GEMM_ROW_MULTIPLE``), so a row's text is the same alone or in any batch.

Sampling (:class:`SamplingConfig`) works on the fp32 logits of the next token:

1. RWKV-style repetition penalties: every token already *generated* (the prompt does not count) has
   ``presence_penalty + frequency_penalty * count`` subtracted from its logit, where ``count`` is its
   number of occurrences, multiplied by ``penalty_decay`` after every step (1 = no decay; ChatRWKV
   uses 0.996); ids the tokenizer cannot decode are never sampled;
2. ``temperature == 0``: greedy (the highest logit, the lowest id on ties); otherwise logits are
   divided by the temperature, cut to the ``top_k`` highest (0 = all), then to the smallest set of
   most likely tokens whose probability reaches ``top_p`` (1 = all), and one is drawn.

A row ends with ``"eos"`` on token 0 (end of text; not part of the output), ``"stop"`` when its
decoded text contains a stop string (the text is cut before it; ``tokens`` keep every generated
token), or ``"length"`` after ``max_tokens`` tokens.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from docstream.model import RWKVModel, State
from docstream.model.feed import feed_rows
from docstream.tasks.config import SamplingConfig
from docstream.tokenizer import Tokenizer

__all__ = ["EOS_ID", "Generation", "SamplingConfig", "TokenCallback", "feed_prompts", "generate", "sample_token"]

#: RWKV's end-of-text token (World and GPT-NeoX vocabularies alike)
EOS_ID = 0

#: ``on_token(row, token_id, new_text)``: called for every generated token with the text it made
#: printable (possibly ""; text that could begin a stop string is held back until it cannot)
TokenCallback = Callable[[int, int, str], None]
#: prompts are fed at most this many tokens per forward: memory stays bounded whatever their length
PROMPT_CHUNK_LEN = 1024


@dataclass
class Generation:
    """What one row generated: its text (stop string cut off), token ids, and why it ended."""

    row: int
    text: str
    tokens: list[int]
    finish_reason: str
    seed: int


def sample_token(logits: Tensor, config: SamplingConfig, generator: torch.Generator) -> int:
    """One token id from ``logits`` [V] (fp32, CPU; penalties already applied) per ``config``."""
    if config.temperature == 0:
        return int(torch.argmax(logits))
    x = logits / config.temperature
    if 0 < config.top_k < x.shape[0]:
        kth = torch.topk(x, config.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if config.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= config.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class _Row:
    """The decoding state of one batch row."""

    row: int
    seed: int
    config: SamplingConfig
    tokenizer: Tokenizer
    vocab: int
    generator: torch.Generator = field(init=False)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: str | None = None
    occurrences: Tensor | None = None

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def choose(self, logits: Tensor) -> int:
        """The next token from this row's logits [V]."""
        x = logits
        if self.occurrences is not None:
            seen = (self.occurrences > 0).float()
            x = x - self.config.presence_penalty * seen - self.config.frequency_penalty * self.occurrences
        return sample_token(x, self.config, self.generator)

    def push(self, token: int) -> str:
        """Record ``token``; returns the text it made printable, and sets ``finish`` when the row is done."""
        if token == EOS_ID:
            self.finish = "eos"
            return self._flush(len(self.text))
        self.tokens.append(token)
        self._count(token)
        self.text = self.tokenizer.decode(self.tokens)
        cut = _first_stop(self.text, self.config.stop)
        if cut is not None:
            self.finish = "stop"
            self.text = self.text[:cut]
            return self._flush(cut)
        if len(self.tokens) >= self.config.max_tokens:
            self.finish = "length"
            return self._flush(len(self.text))
        return self._flush(_printable_end(self.text, self.config.stop))

    def _count(self, token: int) -> None:
        if not self.config.uses_penalties:
            return
        if self.occurrences is None:
            self.occurrences = torch.zeros(self.vocab, dtype=torch.float32)
        self.occurrences.mul_(self.config.penalty_decay)
        self.occurrences[token] += 1.0

    def _flush(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        new, self.emitted = self.text[self.emitted:end], end
        return new


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string in ``text`` begins (None: there is none)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _printable_end(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown now: not a trailing incomplete character (U+FFFD) nor a
    tail that could be the beginning of a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, end), hold, -1):
            if text.endswith(stop[:k], 0, end):
                hold = k
                break
    return end - hold


def _check_inputs(states: State, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None) -> None:
    if len(prompts) != states.batch_size:
        raise ValueError(f"got {len(prompts)} prompts for a state of {states.batch_size} rows; pass one prompt per row")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"the prompts of rows {empty} are empty; every row needs at least one token to start "
                         f"from (the state does not hold the logits of its last token)")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} rows; pass one seed per row or none")


def feed_prompts(model: RWKVModel, states: State, prompts: Sequence[Sequence[int]],
                 chunk_len: int = PROMPT_CHUNK_LEN) -> tuple[Tensor, State]:
    """Run each row's prompt from its state, ``chunk_len`` tokens at a time, rows whose chunks have
    the same length together (:func:`~docstream.model.feed.feed_rows`).

    Returns the fp32 logits [B, V] after each prompt's last token and the new states, in row order.
    """
    fed = feed_rows(model, prompts, states, chunk_len, logits="last")
    return torch.stack([f.logits for f in fed]), State.stack([f.state for f in fed])


def generate(model: RWKVModel, tokenizer: Tokenizer, states: State, prompts: Sequence[Sequence[int]],
             config: SamplingConfig, on_token: TokenCallback | None = None, seeds: Sequence[int] | None = None,
             on_finish: Callable[[Generation], None] | None = None) -> list[Generation]:
    """Continue every row of ``states`` with its prompt, then generate per ``config``; results in row order.

    ``seeds`` overrides the per-row seeds (default ``config.seed + row``). ``on_token`` streams
    text as it is generated (see :data:`TokenCallback`); ``on_finish`` gets each row's result as
    soon as the row ends.
    """
    _check_inputs(states, prompts, seeds)
    row_seeds = list(seeds) if seeds is not None else [config.seed + i for i in range(len(prompts))]
    logits, state = feed_prompts(model, states, prompts)
    rows = [_Row(i, s, config, tokenizer, logits.shape[-1]) for i, s in enumerate(row_seeds)]
    active = list(range(len(rows)))
    while active:
        logits = _mask_undecodable(logits.float().cpu(), tokenizer.vocab_size)
        chosen = [_step_row(rows[i], logits[j], on_token) for j, i in enumerate(active)]
        keep = [j for j, i in enumerate(active) if rows[i].finish is None]
        for i in active:
            if rows[i].finish is not None and on_finish is not None:
                on_finish(_result(rows[i]))
        if not keep:
            break
        if len(keep) < len(active):
            state = state.select(keep)
        active = [active[j] for j in keep]
        tokens = torch.tensor([chosen[j] for j in keep], dtype=torch.long)
        logits, state = model.step(tokens, state, inplace=True)  # the loop owns `state` (fresh rows)
    return [_result(r) for r in rows]


def _step_row(row: _Row, logits: Tensor, on_token: TokenCallback | None) -> int:
    token = row.choose(logits)
    new_text = row.push(token)
    if on_token is not None and token != EOS_ID:
        on_token(row.row, token, new_text)
    return token


def _mask_undecodable(logits: Tensor, tokenizer_vocab: int) -> Tensor:
    """``logits`` [B, V] with ids the tokenizer cannot decode (``>= tokenizer_vocab``) made impossible."""
    if tokenizer_vocab < logits.shape[-1]:
        logits = logits.clone()
        logits[:, tokenizer_vocab:] = float("-inf")
    return logits


def _result(row: _Row) -> Generation:
    return Generation(row.row, row.text, list(row.tokens), row.finish or "length", row.seed)
