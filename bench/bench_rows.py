"""The few-row product of decoding steps: docstream's ``linear_rows`` next to MKL (torch's ``@``).

Every matrix of a model of the 169M shape (12 layers of four 768x768, one 3072x768 and one 768x3072,
plus the 65536x768 head), each used once per pass as in a decoding step, so the weights stream from
memory as they do there. Prints the best pass time of each at each row count, with the bandwidth
(weight bytes / time) and arithmetic rate reached.

    python bench/bench_rows.py --rows 1,16 --threads 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docstream.kernels import build  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ext = build.load_cpu()
    g = torch.Generator().manual_seed(0)
    weights = []
    for _ in range(12):
        weights += [torch.randn(768, 768, generator=g) for _ in range(4)]
        weights += [torch.randn(3072, 768, generator=g), torch.randn(768, 3072, generator=g)]
    weights.append(torch.randn(65536, 768, generator=g))
    n_bytes = sum(w.numel() * 4 for w in weights)
    print(f"{len(weights)} matrices, {n_bytes / 1e6:.0f} MB of fp32 weights, {args.threads} threads")
    # MKL both ways round: x @ W^T, and (W @ x^T)^T, the faster one for a few rows before linear_rows
    print(f"{'rows':>5} {'linear_rows ms':>15} {'GB/s':>6} {'GFLOP/s':>8} {'MKL x@W^T':>10} {'MKL W@x^T':>10} "
          f"{'speed-up':>9}")
    for rows in (int(r) for r in args.rows.split(",")):
        xs = {w.shape[1]: torch.randn(rows, w.shape[1], generator=g) for w in weights}
        ours = best_ms(lambda: [ext.linear_rows(xs[w.shape[1]], w) for w in weights], args.repeats)
        mkl = best_ms(lambda: [xs[w.shape[1]] @ w.T for w in weights], args.repeats)
        mkl_t = best_ms(lambda: [(w @ xs[w.shape[1]].T).T for w in weights], args.repeats)
        flops = 2 * rows * n_bytes / 4
        print(f"{rows:>5} {ours:>15.1f} {n_bytes / ours / 1e6:>6.1f} {flops / ours / 1e6:>8.1f} {mkl:>10.1f} "
              f"{mkl_t:>10.1f} {min(mkl, mkl_t) / ours:>8.2f}x")
    # the same kernel on one 768x768 matrix that stays in cache: its arithmetic rate without the stream
    w, hot = weights[0], {}
    for rows in (int(r) for r in args.rows.split(",")):
        x = torch.randn(rows, 768, generator=g)
        ms = best_ms(lambda: [ext.linear_rows(x, w) for _ in range(50)], args.repeats) / 50
        hot[rows] = f"{2 * rows * w.numel() / ms / 1e6:.1f}"
    print("in cache (one 768x768 matrix), GFLOP/s: " + ", ".join(f"{r} rows {v}" for r, v in hot.items()))


if __name__ == "__main__":
    main()
