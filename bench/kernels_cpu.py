"""Time the compiled CPU WKV kernels against the pure-PyTorch references.

Shapes are those of a 169M model (C=768: RWKV-5/6/7 with H=12 heads of N=64): one prefill chunk
(B=1, T=1024) and one decoding step of a batch (B=16, T=1). For scale it also times the matmuls of
one layer on the same chunk (4 C x C projections + the 4C feed-forward), the work the WKV op sits
next to.

Training: forward + backward of RWKV-7 (B=8, T=256, H=4, N=64; gradients of r, w, k, v, a, b and the
initial state, with a gradient flowing into y and into the final state): the compiled backward
(docstream.kernels.autograd) against autograd through the reference.

    python bench/kernels_cpu.py [--threads 2] [--repeat 10]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from docstream.kernels import build, wkv4, wkv4_ref, wkv6, wkv6_ref, wkv7, wkv7_ref


def best_ms(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one warm-up, in ms (best-of is robust to a busy machine)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def inputs7(B, T, H, N):
    g = torch.Generator().manual_seed(0)
    kk = F.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    w = torch.exp(-0.606531 * torch.rand(B, T, H, N, generator=g))
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    return r, w, k * 0.5, v, -kk, kk * torch.rand(B, T, H, N, generator=g), torch.randn(B, H, N, N, generator=g) * 0.1


def inputs6(B, T, H, N):
    g = torch.Generator().manual_seed(1)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = torch.exp(-torch.exp(torch.randn(B, T, H, N, generator=g) - 1))
    return r, k, v, w, torch.randn(H, N, generator=g), torch.randn(B, H, N, N, generator=g) * 0.1


def inputs4(B, T, C):
    g = torch.Generator().manual_seed(2)
    w = -torch.exp(torch.randn(C, generator=g) - 1)
    state = torch.zeros(B, 3, C)
    state[:, 2] = -1e30
    return w, torch.randn(C, generator=g), torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g), state


def train_ms(op, xs, repeat: int) -> float:
    """Best time of one forward + backward of ``op`` from fresh leaves (grads of every input)."""
    leaves = [x.clone().requires_grad_(True) for x in xs]
    g = torch.Generator().manual_seed(3)
    dy, ds = torch.randn(xs[0].shape, generator=g), torch.randn(xs[-1].shape, generator=g)

    def run():
        for x in leaves:
            x.grad = None
        y, s = op(*leaves)
        torch.autograd.backward((y, s), (dy, ds))

    return best_ms(run, repeat)


def layer_matmul_ms(T: int, C: int, repeat: int) -> float:
    x = torch.randn(T, C)
    h = torch.randn(T, 4 * C)
    sq = [torch.randn(C, C) for _ in range(4)]
    up, down = torch.randn(C, 4 * C), torch.randn(4 * C, C)

    def run():
        for m in sq:
            x @ m
        x @ up
        h @ down

    return best_ms(run, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ext = build.load_cpu()
    print(f"CPU extension ready in {time.perf_counter() - t0:.1f} s ({ext.__file__}); "
          f"{torch.get_num_threads()} threads, OpenMP {ext.openmp}")

    C, H, N = 768, 12, 64
    cases = [
        ("wkv7 B=1 T=1024 H=12 N=64", wkv7, wkv7_ref, inputs7(1, 1024, H, N), 3),
        ("wkv6 B=1 T=1024 H=12 N=64", wkv6, wkv6_ref, inputs6(1, 1024, H, N), 3),
        ("wkv4 B=1 T=1024 C=768", wkv4, wkv4_ref, inputs4(1, 1024, C), 3),
        ("wkv7 B=16 T=1 (decode)", wkv7, wkv7_ref, inputs7(16, 1, H, N), args.repeat * 10),
        ("wkv6 B=16 T=1 (decode)", wkv6, wkv6_ref, inputs6(16, 1, H, N), args.repeat * 10),
        ("wkv4 B=16 T=1 (decode)", wkv4, wkv4_ref, inputs4(16, 1, C), args.repeat * 10),
    ]
    print(f"{'op':<28}{'compiled ms':>13}{'reference ms':>15}{'speed-up':>10}")
    for name, op, ref, xs, ref_repeat in cases:
        repeat = args.repeat * 10 if "T=1 " in name else args.repeat
        with torch.no_grad():
            fast = best_ms(lambda op=op, xs=xs: op(*xs, backend="cpu"), repeat)
            slow = best_ms(lambda ref=ref, xs=xs: ref(*xs), ref_repeat)
        print(f"{name:<28}{fast:>13.3f}{slow:>15.3f}{slow / fast:>9.1f}x")

    mm = layer_matmul_ms(1024, C, args.repeat)
    flops = 2 * (4 * C * C + 2 * C * 4 * C) * 1024
    print(f"\none layer's matmuls on the 1024-token chunk (C={C}): {mm:.1f} ms "
          f"({flops / mm / 1e6:.0f} GFLOP/s)")
    with torch.no_grad():
        w7 = best_ms(lambda: wkv7(*cases[0][3], backend="cpu"), args.repeat)
        w4 = best_ms(lambda: wkv4(*cases[2][3], backend="cpu"), args.repeat)
    print(f"WKV share of (matmuls + WKV): v7 {100 * w7 / (mm + w7):.1f}%, v4 {100 * w4 / (mm + w4):.1f}%")

    B, T, H = 8, 256, 4
    xs = inputs7(B, T, H, N)
    fast = train_ms(lambda *a: wkv7(*a, backend="cpu"), xs, args.repeat)
    slow = train_ms(wkv7_ref, xs, max(1, args.repeat // 5))
    with torch.no_grad():
        fwd = best_ms(lambda: wkv7(*xs, backend="cpu"), args.repeat)
    print(f"\nwkv7 forward + backward B={B} T={T} H={H} N={N} (grads of r, w, k, v, a, b, state):")
    print(f"  compiled {fast:.1f} ms (inference forward alone {fwd:.1f} ms), reference autograd {slow:.1f} ms: "
          f"{slow / fast:.1f}x")


if __name__ == "__main__":
    main()
