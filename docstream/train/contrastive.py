"""``docstream train --objective contrastive``: tune an RWKV checkpoint (any version) as a passage embedder.

Each step embeds ``batch_size`` pairs built from the training text (:mod:`docstream.train.pairs`; plus
JSONL pairs with ``--pairs``) with the embedder's own pooling (:func:`docstream.model.embedding.pooled_lists`),
and minimizes the symmetric InfoNCE loss with in-batch negatives: pair i's two sides should be each
other's nearest neighbours (cosine similarity / temperature) among all sides of the batch.

The training directory is that of :mod:`docstream.train.loop` (lock, settings check, resumable
``train_state.pt``, ``model.pth`` in BlinkDL's layout, ``log.jsonl``), plus::

    model.embedder.json   how the model embeds a passage (pooling, eos token, tokenizer, width)
    tokenizer.json|.txt   the tokenizer, copied in when it was given, so the folder is self-contained

The LM head is left as it was (no loss reaches it), so ``model.pth`` still loads as a language model.
Every ``eval_every`` steps the log records ``heldout_recall1``: how often the second half of a held-out
window is the nearest of all held-out second halves to its first half (1 / eval_pairs by chance).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from docstream.files import atomic_write_bytes
from docstream.model.base import RWKVModel
from docstream.model.embedding import (
    EmbedderSpec,
    check_fits,
    embed_tokens,
    pooled_lists,
    read_embedder_spec,
    write_embedder_spec,
)
from docstream.tokenizer import resolve_tokenizer_path
from docstream.train.config import TrainConfig
from docstream.train.loop import (
    _check_settings,
    _directory_lock,
    _model,
    _resume,
    _save,
    _tokenizer,
    apply_gradients,
    finite_loss,
    make_optimizer,
    set_learning_rate,
)
from docstream.train.pairs import (
    Pair,
    PairSampler,
    heldout_pairs,
    load_documents,
    read_pairs,
)

SPEC_NAME = "model.embedder.json"


@dataclass(frozen=True)
class ContrastiveResult:
    out: Path
    steps: int
    pairs: int
    seconds: float
    loss: float
    heldout_recall1: float | None
    model_path: Path
    spec_path: Path


#: the token weights' name in a training directory
WEIGHTS_NAME = "token_weights.npy"


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE of paired embeddings a, b [B, C]: cross-entropy of each row's match among all
    rows of the other side (cosine similarities / temperature), averaged over both directions."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # [B, B]
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def recall_at_1(a: Tensor, b: Tensor) -> float:
    """Share of rows of ``a`` whose most similar row of ``b`` (cosine) is their own pair."""
    sims = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    return (sims.argmax(dim=1) == torch.arange(a.shape[0], device=a.device)).float().mean().item()


def _copy_tokenizer(config: TrainConfig) -> str:
    """The tokenizer's file name inside the training directory, copying it there if it was given."""
    if config.tokenizer is None:
        return "tokenizer.json"  # trained into the directory by _tokenizer
    source = resolve_tokenizer_path(config.tokenizer)
    name = "tokenizer" + (".txt" if source.suffix == ".txt" else ".json")
    target = config.out / name
    data = source.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        atomic_write_bytes(target, data)
    return name


def _copy_weights(config: TrainConfig) -> str | None:
    """The token weights' file name inside the training directory (copied there), or None without weights."""
    if config.token_weights is None:
        return None
    if config.pooling != "mean":
        raise ValueError(f"token weights weigh the tokens of mean pooling; pooling is {config.pooling!r}")
    data = Path(config.token_weights).read_bytes()
    target = config.out / WEIGHTS_NAME
    if not target.is_file() or target.read_bytes() != data:
        atomic_write_bytes(target, data)
    return WEIGHTS_NAME


def _evaluate(model: RWKVModel, pairs: list[Pair], spec: EmbedderSpec, temperature: float) -> dict[str, float]:
    """Held-out recall@1 and InfoNCE loss of the fixed evaluation pairs."""
    a = torch.from_numpy(embed_tokens(model, [p[0] for p in pairs], spec))
    b = torch.from_numpy(embed_tokens(model, [p[1] for p in pairs], spec))
    return {"heldout_recall1": recall_at_1(a, b), "heldout_loss": info_nce(a, b, temperature).item()}


def train_contrastive(config: TrainConfig) -> ContrastiveResult:
    """Train (or resume training) an embedder as ``config`` says; returns where it ended."""
    if config.objective != "contrastive":
        raise ValueError(f"train_contrastive needs objective 'contrastive', got {config.objective!r}")
    if config.threads:
        torch.set_num_threads(config.threads)
    with _directory_lock(config.out):
        _check_settings(config)
        tokenizer = _tokenizer(config)
        tokenizer_name = _copy_tokenizer(config)
        extra = read_pairs(config.pairs, tokenizer) if config.pairs is not None else None
        sampler = PairSampler(load_documents(config.data, tokenizer), tokenizer, config.span_min, config.ctx_len,
                              config.seed, extra)
        span = (config.span_min + config.ctx_len) // 2
        heldout = heldout_pairs(load_documents(config.heldout, tokenizer), span, config.eval_pairs)
        model = _model(config, tokenizer)
        spec = EmbedderSpec(pooling=config.pooling, eos_token=config.eos_token, tokenizer=tokenizer_name,
                            dimension=model.config.n_embd, max_tokens=config.embed_max_tokens,
                            token_weights=_copy_weights(config))
        spec_path = write_embedder_spec(config.out / SPEC_NAME, spec)
        spec = read_embedder_spec(config.out / "model.pth")  # its files as paths that work from anywhere
        check_fits(model, spec)
        optimizer = make_optimizer(model, config)
        step, elapsed, log = _resume(config, model, optimizer)
        return _loop(config, model, optimizer, sampler, heldout, spec, spec_path, step, elapsed, log)


def _loop(config: TrainConfig, model: RWKVModel, optimizer: torch.optim.Optimizer, sampler: PairSampler,
          heldout: list[Pair], spec: EmbedderSpec, spec_path: Path, step: int, elapsed: float,
          log: list[dict[str, Any]]) -> ContrastiveResult:
    bar = tqdm(total=config.max_steps, initial=step, desc="train", unit="step", disable=config.quiet)
    recall = next((r["heldout_recall1"] for r in reversed(log) if "heldout_recall1" in r), None)
    loss_value = log[-1]["loss"] if log else float("nan")
    # training spans are cut to ctx_len; the spec's max_tokens applies to the passages searched later
    train_spec = spec.model_copy(update={"max_tokens": config.ctx_len})
    while step < config.max_steps:
        started = time.perf_counter()
        lr = set_learning_rate(optimizer, config, step)
        pairs = sampler.batch(step, config.batch_size)
        sides = [p[0] for p in pairs] + [p[1] for p in pairs]
        # both sides in length-sorted groups of batch_size: each group is padded to its own longest span
        vectors = pooled_lists(model, sides, train_spec, config.batch_size)  # [2B, C]
        a, b = vectors[:len(pairs)], vectors[len(pairs):]
        loss = info_nce(a, b, config.temperature)
        grad_norm = apply_gradients(model, optimizer, loss, config)
        step += 1
        seconds = time.perf_counter() - started
        elapsed += seconds
        loss_value = finite_loss(loss, step, config)
        record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                  "batch_recall1": recall_at_1(a.detach(), b.detach()),
                                  "pairs": step * config.batch_size, "step_tokens": sum(map(len, sides)),
                                  "seconds": round(elapsed, 3)}
        if step % config.eval_every == 0 or step == config.max_steps:
            record.update(_evaluate(model, heldout, spec, config.temperature))
            recall = record["heldout_recall1"]
        log.append(record)
        if step % config.save_every == 0 or step == config.max_steps:
            _save(config, model, optimizer, step, elapsed, log)
        bar.set_postfix(loss=f"{loss_value:.3f}", s_step=f"{seconds:.2f}",
                        **({"recall1": f"{recall:.3f}"} if recall is not None else {}))
        bar.update(1)
    bar.close()
    return ContrastiveResult(config.out, step, step * config.batch_size, elapsed, loss_value, recall,
                             config.out / "model.pth", spec_path)

