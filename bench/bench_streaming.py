"""Throughput of docstream next to the official ``rwkv`` package and the machine's matmul-bound rate.

One run, same random checkpoint (BlinkDL layout, the 169M shape by default), same tokens:
  * chunked ingestion (forward over chunks with the state carried), several chunk lengths and batches;
  * single-token decoding, batch 1 and 16.
The official package processes one sequence at a time, so its batch-B rate is its batch-1 rate.
The matmul-bound rate is the measured FLOP/s of this layer's matrix products at the same shapes divided
by 2 x (matrix parameters per token); embedding and head are left out because ingestion only needs
the head for the last token.

    python bench/bench_streaming.py --version 7 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from docstream.model import load_model  # noqa: E402
from docstream.testing.checkpoints import save_random_checkpoint  # noqa: E402

SHAPES = {  # the RWKV-4 Pile 169M and RWKV-7 World 0.1B shapes, and the 1.5B shapes
    "169m": dict(n_layer=12, n_embd=768, head_size=64),
    "1.5b": dict(n_layer=24, n_embd=2048, head_size=64),
}
VOCAB = {"4": 50277, "5.2": 65536, "6": 65536, "7": 65536}


def checkpoint(version: str, shape: str, out: Path, stored: str = "fp32") -> Path:
    """A random checkpoint of ``shape``, stored in fp32, or in bf16 as BlinkDL releases them."""
    path = out / (f"rwkv{version}-{shape}.pth" if stored == "fp32" else f"rwkv{version}-{shape}-{stored}.pth")
    if not path.exists():
        save_random_checkpoint(path, version, vocab_size=VOCAB[version], seed=0,
                               dtype=torch.float32 if stored == "fp32" else torch.bfloat16, **SHAPES[shape])
    return path


def matrix_params_per_token(model) -> int:
    """Parameters of every 2-D weight used by each token, except the embedding and the head."""
    return sum(p.numel() for name, p in model.named_parameters()
               if p.dim() >= 2 and not name.startswith(("emb.", "head.")))


def matmul_flops(model, tokens: int, dtype: torch.dtype, device: str, repeats: int = 3) -> float:
    """Measured FLOP/s of the matrix products of one block at ``tokens`` rows."""
    shapes = [tuple(p.shape) for name, p in model.blocks[1].named_parameters() if p.dim() == 2]
    x = {n_in: torch.randn(tokens, n_in, dtype=dtype, device=device) for _, n_in in shapes}
    x.update({r: torch.randn(tokens, r, dtype=dtype, device=device) for r, _ in shapes})
    mats = [torch.randn(a, b, dtype=dtype, device=device) for a, b in shapes]
    flops = sum(2 * tokens * a * b for a, b in shapes)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for m in mats:
            x[m.shape[1]] @ m.T if m.shape[1] in x else None
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return flops / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def docstream_ingest(model, batch: int, chunk: int, n_tokens: int, device: str, repeats: int) -> float:
    tokens = torch.randint(0, model.config.vocab_size, (batch, n_tokens), generator=torch.Generator().manual_seed(0))
    model.forward(tokens[:, :chunk].to(device))  # warm-up (kernel build, allocator)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start, state = time.perf_counter(), None
        for s in range(0, n_tokens, chunk):
            _, state = model.forward(tokens[:, s:s + chunk].to(device), state)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return batch * n_tokens / best


def docstream_decode(model, batches: list[int], steps: int, device: str, repeats: int) -> dict[int, float]:
    """Tokens/s of ``model.step`` at each batch size; the batch sizes take turns within every repeat,
    so that a drift of the machine's speed moves all of them alike and their ratio stays fair."""
    runs = {}
    for batch in batches:
        tokens = torch.randint(0, model.config.vocab_size, (batch, steps + 1),
                               generator=torch.Generator().manual_seed(1)).to(device)
        runs[batch] = (tokens, model.forward(tokens[:, :1])[1])
    best = {batch: float("inf") for batch in batches}
    for _ in range(repeats):
        for batch, (tokens, first) in runs.items():
            state = first.clone()
            _sync(device)
            start = time.perf_counter()
            for t in range(1, steps + 1):  # a decoding loop owns its state: step in place
                _, state = model.step(tokens[:, t], state, inplace=True)
            _sync(device)
            best[batch] = min(best[batch], time.perf_counter() - start)
    return {batch: batch * steps / best[batch] for batch in batches}


OFFICIAL = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from rwkv.model import RWKV
path, strategy, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
stem = path[:-4] if path.endswith('.pth') else path  # the v7 class always appends .pth
try:
    model = RWKV(stem, strategy, verbose=False)
except TypeError:  # the v7 class takes no verbose flag
    model = RWKV(stem, strategy)
dev = 'cuda' if 'cuda' in strategy else 'cpu'
sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
g = torch.Generator().manual_seed(0)
out = {}
repeats = int(sys.argv[6])
for key, (mode, chunk, n) in plan.items():
    toks = torch.randint(0, int(sys.argv[5]), (n + 1,), generator=g).tolist()
    model.forward(toks[:max(chunk, 2)], None); sync()
    best = float('inf')
    for _ in range(repeats):
        start, state = time.perf_counter(), None
        if mode == 'ingest':
            for s in range(0, n, chunk):
                _, state = model.forward(toks[s:s + chunk], state)
        else:
            for t in range(n):
                _, state = model.forward([toks[t]], state)
        sync()
        best = min(best, time.perf_counter() - start)
    out[key] = n / best
print(json.dumps(out))
"""


def official_rates(path: Path, version: str, strategy: str, plan: dict, threads: int, repeats: int) -> dict:
    env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="1" if "cuda" in strategy else "0",
               RWKV_V7_ON="1" if version == "7" else "0")
    proc = subprocess.run([sys.executable, "-c", OFFICIAL, str(path), strategy, json.dumps(plan), str(threads),
                           str(VOCAB[version]), str(repeats)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"official package failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="7", choices=sorted(VOCAB))
    ap.add_argument("--shape", default="169m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", default="128,1024")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--decode-batches", default="1,16")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per sequence for ingestion")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many timings, for both packages")
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = args.device.startswith("cuda")
    path = checkpoint(args.version, args.shape, out, "bf16" if on_gpu else "fp32")
    model = load_model(path, device=args.device, dtype=args.dtype)
    gpu = f" ({torch.cuda.get_device_name()})" if on_gpu else ""
    per_token = matrix_params_per_token(model)
    chunks = [int(c) for c in args.chunks.split(",")]
    print(f"RWKV-{args.version} {args.shape} ({per_token / 1e6:.1f} M matrix params/token), {args.device} "
          f"{args.dtype}{gpu}, {args.threads} threads, torch {torch.__version__}")

    rows, plan = [], {}
    for chunk in chunks:
        for batch in (int(b) for b in args.batches.split(",")):
            # the limit at the rows one chunk of the whole batch multiplies at once
            limit = matmul_flops(model, batch * chunk, model.dtype, args.device,
                                 repeats=10 if on_gpu else 3) / (2 * per_token)
            rate = docstream_ingest(model, batch, chunk, args.tokens, args.device, args.repeats)
            rows.append(dict(mode="ingest", chunk=chunk, batch=batch, docstream=rate, limit=limit))
        plan[f"ingest-{chunk}"] = ("ingest", chunk, args.tokens)
    decode_batches = [int(b) for b in args.decode_batches.split(",")]
    for batch, rate in docstream_decode(model, decode_batches, args.decode_steps, args.device,
                                        args.repeats).items():
        rows.append(dict(mode="decode", chunk=1, batch=batch, docstream=rate, limit=None))
    plan["decode"] = ("decode", 1, args.decode_steps)

    official_dtype = args.dtype
    if on_gpu and args.version == "4" and args.dtype == "bf16":
        official_dtype = "fp16"  # the official RWKV-4 CUDA kernel takes fp16 and fp32 only
        print("the official package runs RWKV-4 on CUDA in fp16: its WKV kernel has no bf16")
    strategy = f"{'cuda' if on_gpu else 'cpu'} {official_dtype}"
    official = {} if args.no_official else official_rates(path, args.version, strategy, plan, args.threads,
                                                           args.repeats)
    # ceiling: the largest ratio to the official package that any implementation bound by this
    # machine's matrix products could reach (matmul-bound rate / official rate)
    print(f"{'mode':>7} {'chunk':>6} {'batch':>6} {'docstream tok/s':>16} {'rwkv tok/s':>11} {'ratio':>6} "
          f"{'matmul-bound':>13} {'fraction':>9} {'ceiling':>8}")
    for r in rows:
        ref = official.get(f"ingest-{r['chunk']}" if r["mode"] == "ingest" else "decode")
        r["official"] = ref
        ratio = f"{r['docstream'] / ref:6.2f}" if ref else "     -"
        limit = f"{r['limit']:13.0f}" if r["limit"] else "            -"
        frac = f"{r['docstream'] / r['limit']:9.2f}" if r["limit"] else "        -"
        ceiling = f"{r['limit'] / ref:8.2f}" if r["limit"] and ref else "       -"
        print(f"{r['mode']:>7} {r['chunk']:>6} {r['batch']:>6} {r['docstream']:16.1f} "
              f"{(ref or 0):11.1f} {ratio} {limit} {frac} {ceiling}")
    decode = {r["batch"]: r["docstream"] for r in rows if r["mode"] == "decode"}
    if len(decode) > 1:
        lo, hi = min(decode), max(decode)
        print(f"decode batch {hi} / batch {lo}: {decode[hi] / decode[lo]:.1f}x tokens/s")
    result = dict(version=args.version, shape=args.shape, device=args.device, dtype=args.dtype,
                  threads=args.threads, rows=rows)
    (out / f"streaming-v{args.version}-{args.shape}-{args.device}-{args.dtype}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
