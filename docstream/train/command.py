"""``docstream train``: the command-line face of :mod:`docstream.train.loop` (imports nothing heavy
until it runs, so ``docstream --help`` stays fast)."""
from __future__ import annotations

import argparse

#: flags that map one-to-one onto :class:`~docstream.train.config.TrainConfig` fields
_FIELDS = ("out", "tokenizer", "vocab_size", "init_from", "n_layer", "n_embd", "head_size", "dim_ffn", "ctx_len",
           "batch_size", "lr", "lr_final", "warmup_steps", "max_steps", "weight_decay", "grad_clip", "eval_every",
           "eval_bytes", "save_every", "save_dtype", "seed", "dtype", "device", "backend", "threads")


def add_train_command(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train an RWKV-7 from scratch or fine-tune a checkpoint (re-run to resume)",
                        description="Train an RWKV-7 from scratch (with a new byte-level BPE tokenizer unless "
                                    "--tokenizer is given) or fine-tune a BlinkDL checkpoint of any version "
                                    "(--init-from). Re-running on the same --out resumes from its checkpoint.")
    tr.add_argument("--config", help="YAML/TOML/JSON file of training settings (flags override it)")
    tr.add_argument("--data", nargs="+", help="training text: .txt/.md files or directories")
    tr.add_argument("--heldout", nargs="+", help="held-out text for bits-per-byte evaluation")
    tr.add_argument("--out", help="training directory (checkpoints, log, model.pth)")
    tr.add_argument("--tokenizer", help="tokenizer .json/.txt to use instead of training a BPE")
    tr.add_argument("--vocab-size", type=int, help="vocabulary of the trained BPE (default 4096)")
    tr.add_argument("--init-from", help="BlinkDL .pth to fine-tune (RWKV-4, 5.2, 6 or 7)")
    tr.add_argument("--n-layer", type=int, help="layers of a new model (default 6)")
    tr.add_argument("--n-embd", type=int, help="width of a new model (default 256)")
    tr.add_argument("--head-size", type=int, help="head size of a new model (default 64)")
    tr.add_argument("--dim-ffn", type=int, help="feed-forward width of a new model (default 4 x width)")
    tr.add_argument("--ctx-len", type=int, help="tokens per training sequence (default 256)")
    tr.add_argument("--batch-size", type=int, help="sequences per step (default 8)")
    tr.add_argument("--lr", type=float, help="peak learning rate (default 6e-4)")
    tr.add_argument("--lr-final", type=float, help="learning rate at the end of the cosine (default 6e-5)")
    tr.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 50)")
    tr.add_argument("--max-steps", type=int, help="total optimizer steps (default 1000)")
    tr.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.1)")
    tr.add_argument("--grad-clip", type=float, help="gradient norm clip (default 1.0)")
    tr.add_argument("--eval-every", type=int, help="held-out evaluation every N steps (default 100)")
    tr.add_argument("--eval-bytes", type=int, help="bytes of held-out text evaluated (default 200000)")
    tr.add_argument("--save-every", type=int, help="checkpoint every N steps (default 100)")
    tr.add_argument("--save-dtype", choices=["fp32", "bf16"], help="dtype of the exported model.pth")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--dtype", choices=["fp32", "bf16"], help="bf16 autocasts on CUDA")
    tr.add_argument("--device", help="cpu or cuda[:N]")
    tr.add_argument("--backend", choices=["auto", "cpu", "cuda", "torch"])
    tr.add_argument("--threads", type=int, help="CPU threads")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from docstream.train.config import build_train_config
    from docstream.train.loop import train

    overrides = {name: getattr(args, name) for name in _FIELDS}
    overrides["data"], overrides["heldout"] = args.data, args.heldout
    overrides["quiet"] = True if args.quiet else None
    config = build_train_config(args.config, overrides)
    result = train(config)
    bpb = f"{result.heldout_bpb:.4f}" if result.heldout_bpb is not None else "n/a"
    print(f"trained {result.steps} steps, {result.tokens:,} tokens in {result.seconds:,.0f} s: "
          f"loss {result.loss:.4f}, held-out {bpb} bits per byte")
    print(f"model  {result.model_path}")
    return 0
