"""Model cards: what a trained model is, how it was made, and how well it compresses held-out text.

Bits per byte are set next to two baselines computed on the same held-out bytes: the byte unigram
entropy (the best any model that ignores context can do) and gzip's compressed size.
"""
from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def unigram_bits_per_byte(data: bytes) -> float:
    """Entropy of the byte distribution of ``data``, in bits per byte."""
    if not data:
        raise ValueError("cannot measure the entropy of empty text")
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def gzip_bits_per_byte(data: bytes) -> float:
    """gzip -9's compressed size of ``data``, in bits per input byte."""
    if not data:
        raise ValueError("cannot compress empty text")
    return 8 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data)


def read_log(train_dir: Path) -> list[dict[str, Any]]:
    """The per-step records of a training directory's ``log.jsonl``."""
    path = Path(train_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {train_dir} a docstream train directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_loss(log: list[dict[str, Any]], png: Path, baselines: dict[str, float] | None = None) -> Path:
    """Training loss per step (nats per token) and held-out bits per byte, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    tokens = [r["tokens"] / 1e6 for r in log]
    left.plot(tokens, [r["loss"] for r in log], lw=0.8, color="tab:blue")
    left.set(xlabel="training tokens (millions)", ylabel="loss (nats / token)", title="training loss")
    evals = [r for r in log if "heldout_bpb" in r]
    right.plot([r["tokens"] / 1e6 for r in evals], [r["heldout_bpb"] for r in evals], "o-", color="tab:red",
               label="model")
    for (name, value), style in zip(sorted((baselines or {}).items()), ("--", ":")):
        right.axhline(value, ls=style, color="gray", label=name)
    right.set(xlabel="training tokens (millions)", ylabel="bits per byte", title="held-out bits per byte")
    right.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


@dataclass(frozen=True)
class CardFacts:
    """What a model card states that the training directory cannot tell."""

    name: str
    data: str
    licence: str
    command: str
    hardware: str
    notes: str = ""


def model_card(facts: CardFacts, config: dict[str, Any], model_config: dict[str, Any], n_params: int,
               log: list[dict[str, Any]], heldout: dict[str, float], file_sizes: dict[str, int]) -> str:
    """The Markdown of a model card."""
    last = log[-1]
    arch = (f"RWKV-{model_config['version']}, {model_config['n_layer']} layers, width {model_config['n_embd']}, "
            f"{model_config['n_embd'] // model_config['head_size']} heads of {model_config['head_size']}, "
            f"feed-forward {model_config['dim_ffn']}, vocabulary {model_config['vocab_size']}, "
            f"{n_params / 1e6:.2f} M parameters")
    lines = [
        f"# {facts.name}", "",
        "docstream's built-in default model: what `docstream demo`, `run`, `search` and `summarize` use when no "
        "`--model` is given. It is small and was trained briefly, on one kind of text: it is here so the whole "
        "pipeline runs offline on a real trained model, not to understand documents the way a large model does.",
        "", "| | |", "|---|---|",
        f"| architecture | {arch} |",
        f"| training data | {facts.data} |",
        f"| licence of the data | {facts.licence} |",
        f"| tokenizer | byte-level BPE, {model_config['vocab_size']} ids, trained on the same data (`tokenizer.json`) |",
        f"| tokens seen | {last['tokens']:,} ({last['step']} steps of {config['batch_size']} x {config['ctx_len']} "
        f"tokens) |",
        f"| optimizer | AdamW, lr {config['lr']:g} to {config['lr_final']:g} (warm-up {config['warmup_steps']} "
        f"steps, cosine), betas {tuple(config['betas'])}, weight decay {config['weight_decay']:g}, "
        f"gradient clip {config['grad_clip']:g} |",
        f"| training time | {last['seconds'] / 60:.1f} min of optimizer steps (evaluations and checkpoints "
        f"not counted) |",
        f"| hardware | {facts.hardware} |",
        f"| final training loss | {last['loss']:.4f} nats / token |",
        "| files | " + ", ".join(f"`{k}` {v / 1e6:.1f} MB" for k, v in file_sizes.items()) + " |",
        "", "## Held-out bits per byte", "",
        f"Measured on {heldout['bytes']:,} bytes of held-out text never used in training (nor to train the "
        "tokenizer), with the weights exactly as shipped; lower is better.", "",
        "| | bits per byte |", "|---|---|",
        f"| this model | **{heldout['model']:.3f}** |",
        f"| gzip -9 | {heldout['gzip']:.3f} |",
        f"| byte unigram entropy | {heldout['unigram']:.3f} |",
        *(["", facts.notes] if facts.notes else []),
        "", "![loss curve](loss_curve.png)", "",
        "## Reproduce", "", "```", facts.command, "```", "",
    ]
    return "\n".join(lines)
