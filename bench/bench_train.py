"""Training throughput of ``docstream train``'s step at the default model's shape, with RWKV-7's compiled
WKV backward and with autograd through the PyTorch reference, side by side in one run.

    python bench/bench_train.py [--layers 6 --width 256 --batch 8 --ctx 256 --steps 5 --threads 2]

A step is what the training loop does: forward over [batch, ctx] tokens, cross-entropy, backward,
gradient clipping and an AdamW update. The first step of each backend is a warm-up (the compiled
kernels build or load then); the median of the others is reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docstream.train.config import TrainConfig
from docstream.train.loop import make_optimizer, new_rwkv7


def time_steps(config: TrainConfig, backend: str, steps: int, vocab: int) -> float:
    model = new_rwkv7(config, vocab).train().requires_grad_(True).set_backend(backend)
    optimizer = make_optimizer(model, config)
    tokens = torch.randint(0, vocab, (config.batch_size, config.ctx_len + 1), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        logits, _ = model.forward_train(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(data=["-"], heldout=["-"], out="-", n_layer=args.layers, n_embd=args.width,
                         batch_size=args.batch, ctx_len=args.ctx)
    tokens = args.batch * args.ctx
    print(f"RWKV-7 L{args.layers} C{args.width} V{args.vocab}, batch {args.batch} x {args.ctx} tokens, "
          f"{args.threads} threads, fp32 CPU")
    results = {}
    for backend, label in (("cpu", "compiled backward"), ("torch", "reference autograd")):
        seconds = time_steps(config, backend, args.steps, args.vocab)
        results[backend] = seconds
        print(f"  {label:<20} {seconds:7.3f} s/step  {tokens / seconds:8,.0f} tok/s")
    print(f"  speed-up {results['torch'] / results['cpu']:.1f}x")


if __name__ == "__main__":
    main()
