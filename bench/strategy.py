"""Strategy strings and int8 weights, measured in one run.

For each strategy, on the 169M RWKV-7 shape (L12, C768, head 64, World vocabulary; random weights):
- the memory its weights take (parameters and buffers, MiB), and what a fresh process measures: the
  resident memory loading the model adds (after imports) and the process's peak RSS;
- ingestion: tok/s of ``forward_hidden`` on [batch, chunk] tokens from a carried state (best of ``--repeats``);
- decoding: tok/s of ``step`` at batch 1 (and ``--decode-batch``), in place, after a warm-up;
- the largest logit difference against the fp32 model on the same tokens (max over positions and vocabulary),
  next to the largest logit, for scale.

Then, with the built-in model (trained weights) on its held-out plays (the demo corpus's ``plays``): the bits
per byte of each strategy against fp32's. The anchor for speed and memory is the plain fp32 model (``cpu fp32``
or ``cuda fp32``), in the same run.

    python bench/strategy.py                       # the CPU strategies
    python bench/strategy.py --device cuda         # the CUDA ones (and a CUDA -> CPU split)
    python bench/strategy.py --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from docstream.model import load_model
from docstream.model.quant import weight_bytes
from docstream.testing.checkpoints import save_random_checkpoint

SHAPE = {"n_layer": 12, "n_embd": 768, "head_size": 64, "vocab_size": 65536}
STRATEGIES = {
    "cpu": ["cpu fp32", "cpu fp32i8", "cpu bf16", "cpu bf16i8", "cpu fp32i8 *6 -> cpu fp32"],
    "cuda": ["cuda fp32", "cuda fp16", "cuda bf16", "cuda fp16i8", "cuda bf16i8", "cuda fp16i8 *6 -> cpu fp32"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--strategy", action="append", help="strategies to measure (default: the device's list)")
    p.add_argument("--batch", type=int, default=None, help="ingestion batch (default: 2 on cpu, 16 on cuda)")
    p.add_argument("--chunk", type=int, default=None, help="ingestion chunk length (default: 128 cpu, 1024 cuda)")
    p.add_argument("--decode-steps", type=int, default=None, help="timed decoding steps (default: 20 cpu, 200 cuda)")
    p.add_argument("--decode-batch", type=int, default=8, help="the second decoding batch size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--heldout-bytes", type=int, default=60_000, help="bytes of held-out plays for bits per byte")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ingest_rate(model, batch: int, chunk: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (batch, chunk), generator=g).to(model.device)
    state = model.forward_hidden(tokens).state  # warm-up; later chunks carry a state
    best = float("inf")
    for _ in range(repeats):
        sync(model.device)
        t0 = time.perf_counter()
        model.forward_hidden(tokens, state)
        sync(model.device)
        best = min(best, time.perf_counter() - t0)
    return batch * chunk / best


def decode_rate(model, batch: int, steps: int) -> float:
    state = model.init_state(batch)
    token = torch.zeros(batch, dtype=torch.long)
    for _ in range(3):
        logits, state = model.step(token, state, inplace=True)
    sync(model.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits, state = model.step(token, state, inplace=True)
        token = logits.argmax(-1).cpu()  # what generation does: the next token comes from the logits
    sync(model.device)
    return batch * steps / (time.perf_counter() - t0)


_RSS = r"""
import gc, json, resource, sys
import torch
from docstream.model import load_model
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
model = load_model(sys.argv[1], strategy=sys.argv[2])
gc.collect()
with open("/proc/self/status") as f:  # VmHWM: this image's peak (ru_maxrss would include the parent's at fork)
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"rss_mib": (rss() - before) / 2**20, "peak_rss_mib": peak / 1024}))
"""


def load_rss(path: Path, strategy: str) -> dict:
    """Resident memory a fresh process gains by loading the model (after imports), and its peak RSS."""
    done = subprocess.run([sys.executable, "-c", _RSS, str(path), strategy], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def heldout_text(limit: int) -> bytes:
    plays = sorted((ROOT / "docstream" / "data" / "sample_corpus" / "plays").glob("*.txt"))
    return b"\n\n".join(p.read_bytes() for p in plays)[:limit]


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA GPU here; run with --device cpu")
        return 1
    batch, chunk = args.batch or (16 if cuda else 2), args.chunk or (1024 if cuda else 128)
    steps = args.decode_steps or (200 if cuda else 20)
    strategies = args.strategy or STRATEGIES[args.device]
    anchor = f"{args.device} fp32"
    if anchor not in strategies:
        strategies = [anchor, *strategies]
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device {device_name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; 169M shape "
          f"{SHAPE}; ingest [{batch}, {chunk}], decode batch 1 and {args.decode_batch}, {steps} steps")

    from docstream.defaults import default_model_path, default_tokenizer_path
    from docstream.tokenizer import load_tokenizer
    from docstream.train.loop import heldout_bits_per_byte

    text = heldout_text(args.heldout_bytes)
    tokenizer = load_tokenizer(default_tokenizer_path())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_checkpoint(Path(tmp) / "rwkv7-169m.pth", "7", seed=0, **SHAPE)
        g = torch.Generator().manual_seed(1)
        probe = torch.randint(0, SHAPE["vocab_size"], (1, 64), generator=g)
        want = load_model(path).forward(probe, all_logits=True)[0]
        for strategy in strategies:
            model = load_model(path, strategy=strategy)
            got = model.forward(probe.to(model.device), all_logits=True)[0].cpu()
            row = {"strategy": strategy, "weights_mib": weight_bytes(model) / 2**20, **load_rss(path, strategy),
                   "ingest_tok_s": ingest_rate(model, batch, chunk, args.repeats),
                   "decode_tok_s": decode_rate(model, 1, steps),
                   f"decode_b{args.decode_batch}_tok_s": decode_rate(model, args.decode_batch, steps),
                   "max_logit_diff": float((got - want).abs().max()), "max_logit": float(want.abs().max())}
            del model
            small = load_model(default_model_path(), strategy=strategy.replace("*6", "*3"))
            row["heldout_bpb"] = heldout_bits_per_byte(small, tokenizer, text, chunk_len=512)
            del small
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = next(r for r in rows if r["strategy"] == anchor)
    print(f"\n{'strategy':<30}{'weights MiB':>12}{'RSS MiB':>9}{'peak MiB':>9}{'ingest tok/s':>14}{'decode b1':>11}"
          f"{f'decode b{args.decode_batch}':>11}{'max |dlogit|':>14}{'bpb':>9}{'d bpb':>10}")
    for r in rows:
        print(f"{r['strategy']:<30}{r['weights_mib']:>12.1f}{r['rss_mib']:>9.0f}{r['peak_rss_mib']:>9.0f}"
              f"{r['ingest_tok_s']:>14,.0f}{r['decode_tok_s']:>11,.1f}"
              f"{r[f'decode_b{args.decode_batch}_tok_s']:>11,.1f}{r['max_logit_diff']:>14.4f}"
              f"{r['heldout_bpb']:>9.4f}{r['heldout_bpb'] - base['heldout_bpb']:>+10.5f}")
    print(f"\nratios to {anchor}: " + "; ".join(
        f"{r['strategy']}: weights {r['weights_mib'] / base['weights_mib']:.2f}x, ingest "
        f"{r['ingest_tok_s'] / base['ingest_tok_s']:.2f}x, decode {r['decode_tok_s'] / base['decode_tok_s']:.2f}x"
        for r in rows if r is not base))
    print(f"(largest fp32 logit {base['max_logit']:.2f}; held-out text {len(text):,} bytes of the built-in model's "
          f"held-out plays)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                               "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
