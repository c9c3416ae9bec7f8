"""``docstream train``: RWKV-7 from scratch, or fine-tuning any supported version, with autograd.

A training directory holds::

    settings.json        the settings that decide the loss curve (a resume must match them)
    tokenizer.json       the byte-level BPE trained on the data (unless a tokenizer was given)
    train_tokens.npy     the training text, tokenized once
    train_state.pt       the resumable checkpoint: model, optimizer, step, log (written atomically)
    model.pth            the latest weights in BlinkDL's layout (loads in docstream and the rwkv package)
    log.jsonl            one line per step: loss, learning rate, tokens, seconds, held-out bits per byte

Re-running on a directory resumes from ``train_state.pt``. The batch of each step is decided by the
step alone and the checkpoint restores the optimizer exactly, so a resumed run follows the loss curve
an uninterrupted one would.

Each save writes ``model.pth`` and ``log.jsonl`` before ``train_state.pt``, each atomically: the step
recorded in ``train_state.pt`` always has its model and log on disk, and a process killed between the
writes only makes the next run redo the steps since the previous checkpoint. A run that finds the
training already finished checks both exports against the checkpoint and rewrites whichever is missing
or differs. Temporary files a killed process left behind are removed when the next run takes the lock.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from docstream.files import atomic_write_bytes, try_lock
from docstream.model.base import RWKVModel
from docstream.model.config import ModelConfig
from docstream.model.feed import feed_sequence
from docstream.model.loader import build_model, read_checkpoint
from docstream.model.v7 import RWKV7
from docstream.tokenizer import load_tokenizer
from docstream.tokenizer.base import Tokenizer
from docstream.train.bpe import train_bpe
from docstream.train.config import CURVE_DEFAULTS, TrainConfig
from docstream.train.data import DOC_SEPARATOR, Batches, heldout_bytes, tokenize_to_file
from docstream.train.init import init_rwkv7_

#: parameters trained at twice the base learning rate (the decay base of RWKV-7, as its authors do)
DOUBLE_LR = ("att.w0",)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    tokens: int
    seconds: float
    loss: float
    heldout_bpb: float | None
    model_path: Path


class TrainingLockedError(RuntimeError):
    """Another process is training in the same directory."""


@contextlib.contextmanager
def _directory_lock(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    fd = try_lock(out / ".lock")
    if fd is None:
        raise TrainingLockedError(f"{out} is being trained in by another process (its lock {out / '.lock'} "
                                  f"is held); wait for it to finish")
    try:
        _remove_stale_temp_files(out)
        yield
    finally:
        os.close(fd)


#: the temporary names docstream's own writers use in a training directory (``.<name>.tmp-<pid>``, see
#: :mod:`docstream.files`), and the fixed names older versions used for the token file and the BPE
#: tokenizer; nothing else is ever removed
_TEMP_NAME = re.compile(r"\.(settings\.json|train_state\.pt|model\.pth|log\.jsonl|train_tokens\.npy|tokenizer\.json"
                        r"|tokenizer\.txt|model\.embedder\.json|adapter\.safetensors|adapter\.json)"
                        r"\.tmp-\d+|train_tokens\.tmp\.npy|tokenizer\.json\.tmp")


def _remove_stale_temp_files(out: Path) -> None:
    """Delete the temporary files of killed runs. Only called while holding the directory's lock, so
    no live process can be writing any of them."""
    for path in out.iterdir():
        if _TEMP_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` down to ``lr_final``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> float:
    """Set the schedule's learning rate of ``step`` on every parameter group (times its ``lr_scale``); returns it."""
    lr = learning_rate(config, step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr


def apply_gradients(model: RWKVModel, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                    config: TrainConfig) -> float:
    """Back-propagate ``loss``, clip the gradients to norm ``config.grad_clip`` and take an optimizer step;
    returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
    optimizer.step()
    return grad_norm


def finite_loss(loss: torch.Tensor, step: int, config: TrainConfig) -> float:
    """``loss`` as a float; ``RuntimeError`` saying what to do when it is NaN or infinite (training diverged)."""
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(f"training diverged at step {step}: loss {value}; lower lr (now {config.lr}) "
                           f"and resume from the last checkpoint in {config.out}")
    return value


def new_rwkv7(config: TrainConfig, vocab_size: int) -> RWKVModel:
    """A new RWKV-7 of the configured shape (default widths of :meth:`ModelConfig.new`), initialized
    as the RWKV authors initialize one."""
    shape = ModelConfig.new("7", n_layer=config.n_layer, n_embd=config.n_embd, head_size=config.head_size,
                            vocab_size=vocab_size, dim_ffn=config.dim_ffn)
    return init_rwkv7_(RWKV7(shape), seed=config.seed)


def make_optimizer(model: RWKVModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only and the decay base at twice the learning rate (a LoRA run:
    the adapters alone, without weight decay)."""
    if config.lora_rank is not None:
        from docstream.train.lora import lora_parameters

        return torch.optim.AdamW([{"params": lora_parameters(model), "weight_decay": 0.0, "lr_scale": 1.0}],
                                 lr=config.lr, betas=config.betas, eps=1e-8)
    groups: dict[str, list[torch.nn.Parameter]] = {"decay": [], "plain": [], "double": []}
    for name, p in model.named_parameters():
        if any(name.endswith(s) for s in DOUBLE_LR):
            groups["double"].append(p)
        elif name.endswith(".weight") and p.squeeze().dim() >= 2:
            groups["decay"].append(p)
        else:
            groups["plain"].append(p)
    params = [
        {"params": groups["decay"], "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": groups["plain"], "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": groups["double"], "weight_decay": 0.0, "lr_scale": 2.0},
    ]
    return torch.optim.AdamW([g for g in params if g["params"]], lr=config.lr, betas=config.betas, eps=1e-8)


def export_blinkdl(model: RWKVModel, path: Path, dtype: str = "fp32") -> Path:
    """Save the weights as a BlinkDL ``.pth`` (a flat dict of tensors under BlinkDL's names), atomically."""
    buf = io.BytesIO()
    torch.save(_blinkdl_weights(model, dtype), buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _blinkdl_weights(model: RWKVModel, dtype: str) -> dict[str, torch.Tensor]:
    """BlinkDL's state dict of ``model`` in ``dtype`` (LoRA adapters, if any, folded into their matrices)."""
    from docstream.train.lora import merged_state

    return merged_state(model, torch.bfloat16 if dtype == "bf16" else torch.float32)


def _log_bytes(log: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in log).encode()


def heldout_bits_per_byte(model: RWKVModel, tokenizer: Tokenizer, text: bytes, chunk_len: int = 1024) -> float:
    """Bits per byte of ``text`` under the model: every token predicted from all before it (the text
    starts after a document separator), streamed in chunks with the state carried."""
    return bits_per_byte(model, tokenizer.encode(text.decode("utf-8")), len(text), chunk_len)


@torch.no_grad()
def bits_per_byte(model: RWKVModel, ids: list[int], n_bytes: int, chunk_len: int = 1024) -> float:
    """:func:`heldout_bits_per_byte` of text already tokenized into ``ids`` (``n_bytes`` UTF-8 bytes)."""
    if not ids:
        raise ValueError("the held-out text is empty")
    targets = torch.tensor(ids)
    nats = 0.0
    for start, fed in feed_sequence(model, [DOC_SEPARATOR] + ids[:-1], None, chunk_len, logits="all"):
        nats += F.cross_entropy(fed.logits, targets[start:start + chunk_len].to(model.device),
                                reduction="sum").item()
    return nats / math.log(2) / n_bytes


def _check_settings(config: TrainConfig) -> None:
    path = config.out / "settings.json"
    settings = config.curve_settings()
    if path.exists():
        saved = json.loads(path.read_text())
        differing = sorted(k for k in settings if saved.get(k, CURVE_DEFAULTS.get(k)) != settings[k])
        if differing:
            detail = "; ".join(f"{k}: {saved.get(k, CURVE_DEFAULTS.get(k))!r} there, {settings[k]!r} now"
                               for k in differing)
            raise ValueError(f"{config.out} holds a training run with other settings ({detail}); "
                             f"use a new --out or the same settings to resume")
    else:
        atomic_write_bytes(path, json.dumps(settings, indent=2).encode())


def _tokenizer(config: TrainConfig) -> Tokenizer:
    if config.tokenizer is not None:
        return load_tokenizer(config.tokenizer)
    path = config.out / "tokenizer.json"
    if not path.exists():
        train_bpe(config.data, config.vocab_size, path)
    return load_tokenizer(path)


def _model(config: TrainConfig, tokenizer: Tokenizer) -> RWKVModel:
    if config.init_from is None:
        model = new_rwkv7(config, tokenizer.vocab_size)
    else:
        model = build_model(read_checkpoint(config.init_from), source=repr(str(config.init_from)))
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"{config.init_from} has a vocabulary of {model.config.vocab_size} ids but the "
                             f"tokenizer has {tokenizer.vocab_size}; fine-tune with the model's own tokenizer")
    model = model.to(config.device).set_backend(config.backend)
    if config.lora_rank is not None:
        from docstream.train.lora import add_lora

        add_lora(model, config.lora_rank, config.lora_alpha, tuple(config.lora_targets), seed=config.seed)
        return model.train()  # frozen, but for the adapters
    return model.train().requires_grad_(True)


def _save(config: TrainConfig, model: RWKVModel, optimizer: torch.optim.Optimizer, step: int,
          elapsed: float, log: list[dict[str, Any]]) -> None:
    """Write the exported model and log, then the resumable checkpoint that marks ``step`` done. A kill
    before the checkpoint lands leaves the previous one in force: the next run redoes the steps since
    it and rewrites all three with the same weights and log."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "elapsed": elapsed, "log": log}, buf)
    _export(config, model)
    atomic_write_bytes(config.out / "log.jsonl", _log_bytes(log))
    atomic_write_bytes(config.out / "train_state.pt", buf.getvalue())


def _restore_exports(config: TrainConfig, model: RWKVModel, log: list[dict[str, Any]]) -> None:
    """Make ``model.pth`` and ``log.jsonl`` those of the finished checkpoint: a directory written by an
    older docstream, killed between its checkpoint and its exports, may lack them or hold older ones."""
    log_path = config.out / "log.jsonl"
    if not log_path.is_file() or log_path.read_bytes() != _log_bytes(log):
        atomic_write_bytes(log_path, _log_bytes(log))
    if config.lora_rank is not None:
        _export(config, model)  # the adapter is small: written again rather than compared
        return
    model_path = config.out / "model.pth"
    if not _same_weights(model_path, _blinkdl_weights(model, config.save_dtype)):
        export_blinkdl(model, model_path, config.save_dtype)


def _export(config: TrainConfig, model: RWKVModel) -> None:
    """The run's exports: ``model.pth``; a LoRA run's adapter weights, and ``model.pth`` only when merging
    (its ``adapter.json`` is written once, when the run starts)."""
    if config.lora_rank is not None:
        from docstream.train.lora import save_adapter

        save_adapter(model, config.out)
        if not config.merge:
            return
    export_blinkdl(model, config.out / "model.pth", config.save_dtype)


def _write_adapter_spec(config: TrainConfig, model: RWKVModel) -> None:
    """A LoRA run's ``adapter.json``: what the adapters are and which model they adapt (hashed once)."""
    from docstream.model.formats.hf_files import checkpoint_fingerprint
    from docstream.train.lora import write_adapter_spec

    write_adapter_spec(model, config.out, {"rank": config.lora_rank, "alpha": config.lora_alpha,
                                           "targets": config.lora_targets, "base": str(config.init_from),
                                           "base_fingerprint": checkpoint_fingerprint(config.init_from)})


def _same_weights(path: Path, expected: dict[str, torch.Tensor]) -> bool:
    if not path.is_file():
        return False
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved.keys() == expected.keys() and all(
            saved[k].dtype == v.dtype and torch.equal(saved[k], v) for k, v in expected.items())
    except Exception:  # unreadable, truncated or not a dict of tensors: rewritten, so any failure means "differs"
        return False


def _resume(config: TrainConfig, model: RWKVModel, optimizer: torch.optim.Optimizer
            ) -> tuple[int, float, list[dict[str, Any]]]:
    """Load ``train_state.pt`` into the model and optimizer if there is one: (step, elapsed, log) to go
    on from, (0, 0.0, []) for a new run. A finished run gets its exports checked and restored."""
    state_path = config.out / "train_state.pt"
    if not state_path.exists():
        return 0, 0.0, []
    saved = torch.load(state_path, map_location=config.device, weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if saved["step"] >= config.max_steps:
        _restore_exports(config, model, saved["log"])
    return saved["step"], saved["elapsed"], saved["log"]


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume training) a language model as ``config`` says; returns where it ended.
    (``objective: contrastive`` is trained by :func:`docstream.train.contrastive.train_contrastive`.)"""
    if config.objective != "lm":
        raise ValueError(f"train() trains language models; objective {config.objective!r} is trained by "
                         f"docstream.train.contrastive.train_contrastive")
    if config.threads:
        torch.set_num_threads(config.threads)
    with _directory_lock(config.out):
        _check_settings(config)
        tokenizer = _tokenizer(config)
        tokens = tokenize_to_file(tokenizer, config.data, config.out / "train_tokens.npy")
        batches = Batches(tokens, config.ctx_len, config.batch_size, config.seed)
        heldout = heldout_bytes(config.heldout, config.eval_bytes)
        heldout_ids = tokenizer.encode(heldout.decode("utf-8"))  # once, evaluated many times
        model = _model(config, tokenizer)
        if config.lora_rank is not None:
            _write_adapter_spec(config, model)
        optimizer = make_optimizer(model, config)
        step, elapsed, log = _resume(config, model, optimizer)
        return _loop(config, model, optimizer, batches, (heldout_ids, len(heldout)), step, elapsed, log)


def _loop(config: TrainConfig, model: RWKVModel, optimizer: torch.optim.Optimizer, batches: Batches,
          heldout: tuple[list[int], int], step: int, elapsed: float, log: list[dict[str, Any]]) -> TrainResult:
    tokens_per_step = config.batch_size * config.ctx_len
    vocab = model.config.vocab_size
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config.dtype == "bf16"
                else contextlib.nullcontext())
    bar = tqdm(total=config.max_steps, initial=step, desc="train", unit="step", disable=config.quiet)
    bpb = next((r["heldout_bpb"] for r in reversed(log) if "heldout_bpb" in r), None)
    loss_value = log[-1]["loss"] if log else float("nan")
    while step < config.max_steps:
        started = time.perf_counter()
        lr = set_learning_rate(optimizer, config, step)
        inputs, targets = batches.batch(step)
        with autocast:
            logits, _ = model.forward_train(inputs.to(config.device))
        loss = F.cross_entropy(logits.float().view(-1, vocab), targets.to(config.device).reshape(-1))
        grad_norm = apply_gradients(model, optimizer, loss, config)
        step += 1
        seconds = time.perf_counter() - started
        elapsed += seconds
        loss_value = finite_loss(loss, step, config)
        record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                  "tokens": step * tokens_per_step, "seconds": round(elapsed, 3)}
        if step % config.eval_every == 0 or step == config.max_steps:
            bpb = bits_per_byte(model, *heldout)
            record["heldout_bpb"] = bpb
        log.append(record)
        if step % config.save_every == 0 or step == config.max_steps:
            _save(config, model, optimizer, step, elapsed, log)
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_step / seconds:,.0f}",
                        **({"bpb": f"{bpb:.3f}"} if bpb is not None else {}))
        bar.update(1)
    bar.close()
    exported = "adapter.safetensors" if config.lora_rank is not None and not config.merge else "model.pth"
    return TrainResult(config.out, step, step * tokens_per_step, elapsed, loss_value, bpb, config.out / exported)
