"""Where a GPU forward spends its time: torch.profiler's table of CUDA kernels and CPU-side ops.

Random weights at a named shape, bf16 on CUDA: one chunked ingestion forward (batch x chunk tokens)
and a few single-token decoding steps. Prints the top entries by CUDA time and by CPU time, and the
wall time of each phase, so that launch overhead (CPU time well above CUDA time) shows up.

    python bench/profile_gpu.py --version 7 --shape 169m --batch 16 --chunk 1024
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_streaming import checkpoint  # noqa: E402
from docstream.model import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="7")
    ap.add_argument("--shape", default="169m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", default="/tmp/docstream-bench")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint(args.version, args.shape, out, "bf16"), device="cuda", dtype="bf16")
    g = torch.Generator().manual_seed(0)
    chunk = torch.randint(0, model.config.vocab_size, (args.batch, args.chunk), generator=g).cuda()
    step_tokens = torch.randint(0, model.config.vocab_size, (1, args.steps), generator=g).cuda()

    def ingest():
        model.forward(chunk)

    def decode():
        state = model.forward(step_tokens[:, :1])[1]
        for t in range(args.steps):
            _, state = model.step(step_tokens[:, t], state, inplace=True)

    for name, fn, unit in (("ingest", ingest, args.batch * args.chunk), ("decode batch 1", decode, args.steps)):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        events = prof.key_averages()
        print(f"\n=== RWKV-{args.version} {args.shape} {name}: {wall * 1e3:.1f} ms wall, {unit / wall:,.0f} tok/s; "
              f"CUDA busy {sum(e.self_device_time_total for e in events) / 1e3:.1f} ms")
        print(events.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=48))
        print(events.table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=48))


if __name__ == "__main__":
    main()
