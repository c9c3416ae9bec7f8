"""``docstream train``: the command-line face of :mod:`docstream.train.loop`."""
from __future__ import annotations

import argparse

from docstream.commands.flags import add_fields, add_quiet, given
from docstream.train.config import TrainConfig

#: TrainConfig fields given as flags (betas only in a settings file; quiet is added by add_quiet)
TRAIN_FIELDS = ("data", "heldout", "out", "tokenizer", "vocab_size", "init_from", "n_layer", "n_embd", "head_size",
                "dim_ffn", "ctx_len", "batch_size", "lr", "lr_final", "warmup_steps", "max_steps", "weight_decay",
                "grad_clip", "eval_every", "eval_bytes", "save_every", "save_dtype", "seed", "dtype", "device",
                "backend", "threads", "objective", "pooling", "eos_token", "temperature", "pairs", "span_min",
                "embed_max_tokens", "eval_pairs", "lora_rank", "lora_alpha", "lora_targets", "merge")


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train an RWKV-7 from scratch or fine-tune a checkpoint (re-run to resume)",
                        description="Train an RWKV-7 from scratch (with a new byte-level BPE tokenizer unless "
                                    "--tokenizer is given) or fine-tune a BlinkDL checkpoint of any version "
                                    "(--init-from). With --objective contrastive, train it as a passage embedder "
                                    "instead (pairs of spans of the text, in-batch negatives, InfoNCE), written "
                                    "with its model.embedder.json. With --lora-rank, train low-rank adapters "
                                    "only (adapter.safetensors; --merge also writes model.pth). Re-running on "
                                    "the same --out resumes from its checkpoint.")
    tr.add_argument("--config", help="YAML/TOML/JSON file of training settings (flags override it)")
    add_fields(tr, TrainConfig, TRAIN_FIELDS)
    add_quiet(tr, TrainConfig.model_fields["quiet"].description)
    tr.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from docstream.train.config import build_train_config

    config = build_train_config(args.config, given(args, (*TRAIN_FIELDS, "quiet")))
    if config.objective == "contrastive":
        from docstream.train.contrastive import train_contrastive

        tuned = train_contrastive(config)
        recall = f"{tuned.heldout_recall1:.3f}" if tuned.heldout_recall1 is not None else "n/a"
        print(f"trained {tuned.steps} steps, {tuned.pairs:,} pairs in {tuned.seconds:,.0f} s: "
              f"loss {tuned.loss:.4f}, held-out recall@1 {recall}")
        print(f"model  {tuned.model_path}")
        print(f"spec   {tuned.spec_path}")
        return 0
    from docstream.train.loop import train

    result = train(config)
    bpb = f"{result.heldout_bpb:.4f}" if result.heldout_bpb is not None else "n/a"
    print(f"trained {result.steps} steps, {result.tokens:,} tokens in {result.seconds:,.0f} s: "
          f"loss {result.loss:.4f}, held-out {bpb} bits per byte")
    print(f"model  {result.model_path}")
    return 0
