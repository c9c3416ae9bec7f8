"""Decoding with and without CUDA graphs, in one run: ``model.step`` at each batch size, eager against
replayed (``docstream.model.graphs.enable_step_graphs``), on one random RWKV checkpoint.

Each measurement feeds a 64-token prompt, then times ``--steps`` steps in place (best of ``--repeats``,
synchronized), as ``docstream.tasks.generate`` does minus the sampling. The two models start from the
same state and the same tokens; the script prints their largest logit difference after the last step.

    python bench/decode_graphs.py                           # RWKV-7 169M shape, bf16, batch 1 and 16
    python bench/decode_graphs.py --version 4 --batches 1,4,16
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="7")
    ap.add_argument("--shape", default="169m", choices=["169m", "1.5b"])
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        print("decode_graphs needs a CUDA GPU")
        return 1
    from corpus_1m import SHAPES

    from docstream.model import load_model
    from docstream.model.graphs import enable_step_graphs
    from docstream.testing.checkpoints import save_random_checkpoint

    shape = dict(SHAPES[args.shape])
    if args.version == "4":
        shape.pop("head_size")
        shape["vocab_size"] = 50277
    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_checkpoint(Path(tmp) / "model.pth", args.version, seed=0, **shape)
        eager = load_model(path, device="cuda", dtype=args.dtype)
        graphed = load_model(path, device="cuda", dtype=args.dtype)
    enable_step_graphs(graphed)
    print(f"RWKV-{args.version} {args.shape} {args.dtype} on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'batch':>5} {'eager tok/s':>12} {'graphs tok/s':>13} {'speed-up':>9} {'max |logit diff|':>17}")
    for batch in (int(b) for b in args.batches.split(",")):
        prompt = torch.randint(0, shape["vocab_size"], (batch, 64), generator=torch.Generator().manual_seed(batch))
        steps = torch.randint(0, shape["vocab_size"], (args.steps, batch), generator=torch.Generator().manual_seed(7))
        rates, last = {}, {}
        for name, model in (("eager", eager), ("graphs", graphed)):
            _, start = model.forward(prompt.cuda())
            model.step(steps[0], start.clone(), inplace=True)  # warm: kernels, and the graph's capture
            best = float("inf")
            for _ in range(args.repeats):
                state = start.clone()
                torch.cuda.synchronize()
                began = time.perf_counter()
                for t in range(args.steps):
                    logits, state = model.step(steps[t], state, inplace=True)
                torch.cuda.synchronize()
                best = min(best, time.perf_counter() - began)
            rates[name], last[name] = batch * args.steps / best, logits.float()
        diff = (last["eager"] - last["graphs"]).abs().max().item()
        print(f"{batch:>5} {rates['eager']:>12,.1f} {rates['graphs']:>13,.1f} "
              f"{rates['graphs'] / rates['eager']:>8.2f}x {diff:>17.4g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
