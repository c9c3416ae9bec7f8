"""LoRA against full fine-tuning of the built-in model on a new text domain, in one run.

The built-in model was trained on Elizabethan drama. Here both runs fine-tune it on licence texts from
``/usr/share/common-licenses``: every licence but the held-out ones, which are ``MPL-2.0`` and
``Apache-2.0``. Same steps, same batches. The script reports:
- trainable parameters;
- the optimizer's state memory (bytes of AdamW's moment tensors, measured after the run);
- median seconds per step;
- held-out bits per byte before and after.

It also checks that the merged LoRA model loads as a plain BlinkDL ``.pth``.

    python bench/bench_lora.py                        # 150 steps each, rank 8
    python bench/bench_lora.py --steps 40 --rank 4    # quicker
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LICENSES = Path("/usr/share/common-licenses")
HELDOUT = ("MPL-2.0", "Apache-2.0")


def corpus(work: Path) -> tuple[Path, Path]:
    train, heldout = work / "train", work / "heldout"
    train.mkdir(parents=True)
    heldout.mkdir()
    for path in sorted(LICENSES.iterdir()):
        if path.is_file() and not path.is_symlink():
            (heldout if path.name in HELDOUT else train).joinpath(path.name + ".txt").write_text(
                path.read_text(encoding="utf-8", errors="replace"), encoding="utf-8")
    return train, heldout


def run(mode: str, args, train_dir: Path, heldout_dir: Path, out: Path) -> dict:
    import torch

    from docstream import defaults
    from docstream.train import loop
    from docstream.train.config import TrainConfig

    settings = dict(data=[train_dir], heldout=[heldout_dir], out=out, init_from=defaults.default_model_path(),
                    tokenizer=defaults.default_tokenizer_path(), ctx_len=args.ctx_len, batch_size=args.batch_size,
                    max_steps=args.steps, warmup_steps=10, eval_every=args.steps, save_every=args.steps,
                    quiet=True, threads=args.threads, seed=0)
    if mode == "lora":
        settings.update(lora_rank=args.rank, merge=True, lr=args.lora_lr, lr_final=args.lora_lr / 10)
    else:
        settings.update(lr=args.full_lr, lr_final=args.full_lr / 10)
    config = TrainConfig(**settings)
    seen = {}
    real_make = loop.make_optimizer

    def make(model, cfg):  # keep the model and optimizer to measure them after the run
        seen["model"], seen["optimizer"] = model, real_make(model, cfg)
        return seen["optimizer"]

    loop.make_optimizer = make
    try:
        started = time.perf_counter()
        result = loop.train(config)
        wall = time.perf_counter() - started
    finally:
        loop.make_optimizer = real_make
    model, optimizer = seen["model"], seen["optimizer"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if not n.endswith((".A", ".B")))
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [b["seconds"] - a["seconds"] for a, b in zip(log, log[1:])]
    return {"mode": mode, "trainable": trainable, "base_params": total, "optimizer_state_bytes": state_bytes,
            "median_step_s": statistics.median(steps), "wall_s": wall, "heldout_bpb": result.heldout_bpb,
            "model": str(result.model_path)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--ctx-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--full-lr", type=float, default=1e-4)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed after)")
    args = ap.parse_args()

    from docstream import defaults
    from docstream.model import load_model
    from docstream.tokenizer import load_tokenizer
    from docstream.train import loop
    from docstream.train.data import heldout_bytes

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="docstream-lora-"))
    try:
        train_dir, heldout_dir = corpus(work / "corpus")
        text = heldout_bytes([heldout_dir], 200_000)
        tokenizer = load_tokenizer(defaults.default_tokenizer_path())
        before = loop.heldout_bits_per_byte(load_model(defaults.default_model_path()), tokenizer, text)
        print(f"built-in model on held-out licences ({len(text):,} bytes): {before:.4f} bits per byte")
        rows = [run(mode, args, train_dir, heldout_dir, work / mode) for mode in ("full", "lora")]
        merged = load_model(rows[1]["model"])  # the merged LoRA model is a plain BlinkDL .pth
        assert merged.version == "7"
        print(f"\n{args.steps} steps, ctx {args.ctx_len}, batch {args.batch_size}; LoRA rank {args.rank}")
        print(f"{'mode':<6}{'trainable':>12}{'share':>8}{'optimizer MiB':>15}{'s/step':>8}{'bpb before':>12}"
              f"{'bpb after':>11}")
        for r in rows:
            print(f"{r['mode']:<6}{r['trainable']:>12,}{r['trainable'] / r['base_params']:>8.1%}"
                  f"{r['optimizer_state_bytes'] / 2**20:>15.2f}{r['median_step_s']:>8.3f}{before:>12.4f}"
                  f"{r['heldout_bpb']:>11.4f}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
