"""docstream's RWKV-7 next to fla (flash-linear-attention) on one CUDA GPU, in one run.

Two comparisons, both in bf16 with fp32 state:

* **the WKV-7 kernel alone**: docstream's ``wkv7(..., backend="cuda")`` against fla's ``chunk_rwkv7``
  (chunked, tensor cores) and ``fused_recurrent_rwkv7`` on the same random inputs (H=12, N=64), each
  taking its own convention (docstream: decay in (0, 1) and state [B, H, V, K]; fla: log decay and state
  [B, H, K, V]). Outputs and final states are compared, so a timing never hides a wrong result.
* **ingesting 1024-token chunks at the 169M shape** (L12, C768, head 64, V65536; low-rank widths
  64/64/32/128 in both): docstream's ``forward_hidden`` against fla's ``RWKV7Model`` (the body, no LM
  head), on random tokens at each batch size.

Times are medians of ``triton.testing.do_bench`` (CUDA events). Needs a GPU with Triton and the
``flash-linear-attention`` package.

    python bench/fla_compare.py
    python bench/fla_compare.py --batches 1,16,64 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPE = {"n_layer": 12, "n_embd": 768, "head_size": 64, "vocab_size": 65536}
LORA = {"decay": 64, "iclr": 64, "value": 32, "gate": 128}  # docstream's defaults at C=768


def kernel_inputs(B: int, T: int, H: int, N: int, seed: int):
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda: torch.randn(B, T, H, N, device="cuda", generator=g)  # noqa: E731
    kk = F.normalize(rnd(), dim=-1)
    log_w = -0.606531 * torch.sigmoid(rnd())  # the models' decay range
    a = torch.sigmoid(rnd())
    bf = torch.bfloat16
    return {"r": rnd().to(bf), "k": (rnd() * 0.5).to(bf), "v": rnd().to(bf), "log_w": log_w,
            "a": (-kk).to(bf), "b": (kk * a).to(bf), "state": torch.randn(B, H, N, N, device="cuda", generator=g) * 0.1}


def compare_kernels(sizes: list[tuple[int, int]], do_bench) -> list[dict]:
    import torch
    from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

    from docstream.kernels import wkv7

    rows = []
    for B, T in sizes:
        x = kernel_inputs(B, T, 12, 64, seed=B * 7919 + T)
        w = torch.exp(x["log_w"])
        fla_h0 = x["state"].transpose(-1, -2).contiguous()  # docstream [.., V, K] -> fla [.., K, V]
        ours = lambda: wkv7(x["r"], w, x["k"], x["v"], x["a"], x["b"], x["state"], backend="cuda")  # noqa: E731
        fla_log_w = x["log_w"].to(torch.bfloat16)
        chunk = lambda: chunk_rwkv7(x["r"], fla_log_w, x["k"], x["v"], x["a"], x["b"], scale=1.0,  # noqa: E731
                                    initial_state=fla_h0, output_final_state=True)
        recur = lambda: fused_recurrent_rwkv7(x["r"], fla_log_w, x["k"], x["v"], x["a"], x["b"],  # noqa: E731
                                              scale=1.0, initial_state=fla_h0, output_final_state=True)
        with torch.no_grad():
            y, s = ours()
            yc, sc = chunk()
            yr, sr = recur()
            scale = y.float().abs().max().item()
            row = {"B": B, "T": T, "docstream_ms": do_bench(ours), "fla_chunk_ms": do_bench(chunk),
                   "fla_recurrent_ms": do_bench(recur), "max_abs_y": scale,
                   "diff_y_chunk": (y.float() - yc.float()).abs().max().item(),
                   "diff_y_recurrent": (y.float() - yr.float()).abs().max().item(),
                   "diff_state_chunk": (s - sc.transpose(-1, -2).float()).abs().max().item(),
                   "max_abs_state": s.abs().max().item()}
        rows.append(row)
        print(f"wkv7 B={B:<3} T={T:<5} docstream {row['docstream_ms']:8.3f} ms   "
              f"fla chunk {row['fla_chunk_ms']:8.3f} ms   fla recurrent {row['fla_recurrent_ms']:8.3f} ms   "
              f"|y| <= {scale:.1f}: max diff "
              f"{row['diff_y_chunk']:.4f} (chunk) {row['diff_y_recurrent']:.4f} (recurrent); state diff "
              f"{row['diff_state_chunk']:.4f} of |s| <= {row['max_abs_state']:.1f}", flush=True)
    return rows


def compare_models(batches: list[int], chunk: int, do_bench) -> list[dict]:
    import torch
    from fla.models import RWKV7Config, RWKV7Model

    from docstream.model import load_model
    from docstream.model.base import tokens_checked
    from docstream.testing.checkpoints import save_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = save_random_checkpoint(Path(tmp) / "rwkv7-169m.pth", "7", seed=0, **SHAPE)
        ours = load_model(path, device="cuda", dtype="bf16").eval()
    config = RWKV7Config(hidden_size=SHAPE["n_embd"], num_hidden_layers=SHAPE["n_layer"],
                         head_dim=SHAPE["head_size"], vocab_size=SHAPE["vocab_size"],
                         decay_low_rank_dim=LORA["decay"], a_low_rank_dim=LORA["iclr"],
                         v_low_rank_dim=LORA["value"], gate_low_rank_dim=LORA["gate"], use_cache=False)
    theirs = RWKV7Model(config).to(device="cuda", dtype=torch.bfloat16).eval()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    print(f"169M shape: docstream {n_ours:,} parameters (with head), fla RWKV7Model {n_theirs:,} (no head)")
    rows = []
    for B in batches:
        tokens = torch.randint(0, SHAPE["vocab_size"], (B, chunk), device="cuda")
        with torch.no_grad(), tokens_checked():  # valid ids: no device read of them per forward
            ms_ours = do_bench(lambda: ours.forward_hidden(tokens))
            ms_theirs = do_bench(lambda: theirs(input_ids=tokens, use_cache=False))
        row = {"B": B, "T": chunk, "docstream_tok_s": B * chunk / ms_ours * 1e3,
               "fla_tok_s": B * chunk / ms_theirs * 1e3, "docstream_ms": ms_ours, "fla_ms": ms_theirs}
        row["ratio"] = row["docstream_tok_s"] / row["fla_tok_s"]
        rows.append(row)
        print(f"ingest B={B:<3} T={chunk}  docstream {row['docstream_tok_s']:>11,.0f} tok/s   "
              f"fla {row['fla_tok_s']:>11,.0f} tok/s   docstream/fla {row['ratio']:.2f}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel-sizes", default="1x1024,16x1024,16x4096", help="BxT list for the WKV kernel")
    ap.add_argument("--batches", default="1,16,64", help="batch sizes for ingestion at the 169M shape")
    ap.add_argument("--chunk-len", type=int, default=1024)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import torch
    if not torch.cuda.is_available():
        print("fla_compare needs a CUDA GPU")
        return 1
    import fla
    import triton.testing

    def do_bench(fn) -> float:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  fla {getattr(fla, '__version__', '?')}")
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.kernel_sizes.split(",") if s]
    result = {"device": torch.cuda.get_device_name(), "kernels": compare_kernels(sizes, do_bench)}
    result["ingest"] = compare_models([int(b) for b in args.batches.split(",") if b], args.chunk_len, do_bench)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
