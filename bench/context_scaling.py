"""Per-token decoding latency and memory as the context grows: docstream's RWKV next to a Transformer.

For each model shape and context length T, in the same run on the same machine:

* RWKV-7 (docstream, random weights in BlinkDL layout): ``model.step`` of one token from a recurrent
  state. The state has the same size whatever T is, and so has the work of a step, so the state is
  prefilled with ``--rwkv-prefill`` random tokens and every context length times the same computation
  (it is measured at each T anyway, in its own process, to show it).
* Transformer: a GPT-NeoX (Pythia-style: rotary position on 25% of each head, parallel residual, MLP 4C,
  heads of 64, untied head) of the same depth, width and vocabulary at random initialization
  (Hugging Face ``transformers``), decoding one token with a KV cache holding T tokens. Prefilling 128K
  tokens through it on a small CPU would take hours, so **the KV cache is synthesized**: every layer's
  keys and values are filled with random numbers of the right shape ``[1, H, T, 64]`` (fp32). The cost of
  the next token depends on how many cached positions it attends to, not on their values. ``--cache``
  picks HF's ``DynamicCache`` (the default of ``generate``: each step concatenates the new position onto
  the cache, copying it) or ``StaticCache`` (preallocated for T + the timed steps, written in place).

Latency is the median over ``--steps`` timed tokens after ``--warmup`` untimed ones (batch 1, fp32, CPU).
Memory is the KV cache's bytes (summed over the cache's key and value tensors at T) and the RWKV state's
bytes (its tensors), plus the peak RSS (``VmHWM``) of a fresh subprocess per (model, context), so peaks
never mix. A context whose cache would not fit in ``--mem-fraction`` of the available memory is skipped
and listed as such.

    python bench/context_scaling.py                                      # both shapes, 512 .. 1M
    python bench/context_scaling.py --shapes default --contexts 512,2048 --steps 4   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {  # the default model's planned shape and the 169M (RWKV-7 World 0.1B / Pythia-160M) shape
    "default": {"n_layer": 6, "n_embd": 256, "head_size": 64, "vocab_size": 4096},
    "169m": {"n_layer": 12, "n_embd": 768, "head_size": 64, "vocab_size": 65536},
}
DEFAULT_CONTEXTS = "512,2048,8192,32768,131072,262144,524288,1048576"

WORKER = r"""
import json, statistics, sys, time
job = json.loads(sys.argv[1])
import torch
torch.set_num_threads(job["threads"])
torch.manual_seed(0)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def timed(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times

shape, T = job["shape"], job["context"]
L, C, V, N = shape["n_layer"], shape["n_embd"], shape["vocab_size"], shape["head_size"]
out = {}
if job["model"] == "rwkv":
    from docstream.model import load_model
    model = load_model(job["checkpoint"])
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["rss_model_mib"] = status("VmRSS")
    prompt = torch.randint(0, V, (1, job["rwkv_prefill"]))
    _, state = model.forward(prompt)
    out["cache_bytes"] = sum(t.numel() * t.element_size() for t in state.parts().values())
    token = torch.randint(0, V, (1,))
    holder = {"state": state}
    def step():
        logits, holder["state"] = model.step(token, holder["state"])
    times = timed(step, job["warmup"], job["steps"])
else:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.cache_utils import DynamicCache, StaticCache
    config = GPTNeoXConfig(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=C // N,
                           intermediate_size=4 * C, rotary_pct=0.25, use_parallel_residual=True,
                           max_position_embeddings=T + job["warmup"] + job["steps"] + 1,
                           tie_word_embeddings=False, attn_implementation="sdpa")
    model = GPTNeoXForCausalLM(config).eval()
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["rss_model_mib"] = status("VmRSS")
    H = C // N
    total = T + job["warmup"] + job["steps"]
    if job["cache"] == "static":
        cache = StaticCache(config=config, max_cache_len=total)
    else:
        cache = DynamicCache(config=config)
    # the synthesized cache: T positions of random keys and values in every layer [1, H, T, N]
    for i in range(L):
        keys, values = torch.randn(1, H, T, N), torch.randn(1, H, T, N)
        cache.update(keys, values, i)
        del keys, values
    assert int(cache.get_seq_length()) == T, cache.get_seq_length()
    out["cache_bytes"] = sum(t.numel() * t.element_size() for layer in cache.layers
                             for t in (layer.keys, layer.values))
    out["cache_bytes_at_T"] = 2 * L * H * T * N * 4
    token = torch.randint(0, V, (1, 1))
    def step():
        with torch.no_grad():
            position = int(cache.get_seq_length())
            model(input_ids=token, past_key_values=cache, use_cache=True,
                  cache_position=torch.tensor([position]), position_ids=torch.tensor([[position]]))
    times = timed(step, job["warmup"], job["steps"])
    out["cache_length_after"] = int(cache.get_seq_length())
out.update(latency_ms=1e3 * statistics.median(times), latency_ms_min=1e3 * min(times),
           latency_ms_max=1e3 * max(times), peak_rss_mib=status("VmHWM"), threads=torch.get_num_threads())
print(json.dumps(out))
"""


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(job: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(job)], check=False, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-1500:] or f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kv_bytes(shape: dict, context: int) -> int:
    return 2 * shape["n_layer"] * context * shape["n_embd"] * 4


def sweep(args, work: Path) -> list[dict]:
    from docstream.testing.checkpoints import save_random_checkpoint

    rows = []
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        checkpoint = work / f"rwkv7-{shape_name}-random.pth"
        if not checkpoint.exists():
            save_random_checkpoint(checkpoint, "7", seed=0, **shape)
        for context in (int(c) for c in args.contexts.split(",")):
            for model in ("rwkv", "transformer"):
                job = {"model": model, "shape": shape, "context": context, "threads": args.threads,
                       "steps": args.steps, "warmup": args.warmup, "cache": args.cache,
                       "rwkv_prefill": args.rwkv_prefill, "checkpoint": str(checkpoint)}
                row = {"shape": shape_name, "model": model, "context": context, "load_before": os.getloadavg()[0]}
                # the cache, plus one transient layer copy while DynamicCache concatenates
                need = kv_bytes(shape, context) * (1 + 2 / shape["n_layer"]) if model == "transformer" else 0
                if need > args.mem_fraction * available_bytes():
                    row["skipped"] = (f"KV cache {need / 2**30:.1f} GiB > {args.mem_fraction:.0%} of the "
                                      f"{available_bytes() / 2**30:.1f} GiB available")
                else:
                    started = time.perf_counter()
                    row.update(measure(job))
                    row["wall_s"] = time.perf_counter() - started
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    head = f"{r['shape']:>8} {r['model']:>12} {r['context']:>9,}"
    if "skipped" in r:
        return f"{head}  skipped: {r['skipped']}"
    if "error" in r:
        return f"{head}  failed: {r['error'].splitlines()[-1]}"
    return (f"{head} {r['latency_ms']:>11.2f} {r['cache_bytes'] / 2**20:>14.3f} {r['peak_rss_mib']:>13.1f} "
            f"{r['rss_model_mib']:>14.1f}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"rwkv": ("RWKV-7 (docstream)", "-", "o"), "transformer": ("Transformer + KV cache", "--", "s")}
    colors = {"default": "tab:blue", "169m": "tab:red"}
    labels = {"default": "L6 C256", "169m": "L12 C768"}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for model, (name, line, marker) in styles.items():
            ok = [r for r in rows if r["shape"] == shape and r["model"] == model and "latency_ms" in r]
            if not ok:
                continue
            x = [r["context"] for r in ok]
            label = f"{name}, {labels.get(shape, shape)}"
            lat.plot(x, [r["latency_ms"] for r in ok], line, marker=marker, color=colors.get(shape), label=label)
            mem.plot(x, [r["cache_bytes"] / 2**20 for r in ok], line, marker=marker, color=colors.get(shape),
                     label=f"{label}: {'state' if model == 'rwkv' else 'KV cache'}")
            mem.plot(x, [r["peak_rss_mib"] for r in ok], line, marker=marker, color=colors.get(shape), alpha=0.35,
                     label=f"{label}: process peak RSS")
    for ax, ylabel in ((lat, "ms per generated token (median)"), (mem, "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    lat.set_title("decoding latency per token")
    mem.set_title("state / KV cache bytes and peak RSS")
    lat.legend(fontsize=7)
    mem.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="default,169m", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--contexts", default=DEFAULT_CONTEXTS, help="comma list of context lengths in tokens")
    ap.add_argument("--steps", type=int, default=16, help="timed tokens per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                    help="the Transformer's KV cache class (Hugging Face DynamicCache or StaticCache)")
    ap.add_argument("--rwkv-prefill", type=int, default=64, help="random tokens run before RWKV's timed steps")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--mem-fraction", type=float, default=0.7,
                    help="skip a context whose KV cache needs more than this fraction of the available memory")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "context_scaling"),
                    help="work and JSON directory (under bench/out/, which git ignores)")
    ap.add_argument("--plot", default=str(ROOT / "bench" / "context_scaling.png"))
    args = ap.parse_args()
    for name in args.shapes.split(","):
        if name not in SHAPES:
            ap.error(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers

    header = (f"batch 1, fp32, CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
              f"{args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"{args.cache} KV cache (synthesized: random keys/values), median of {args.steps} tokens")
    print(header)
    print(f"{'shape':>8} {'model':>12} {'context':>9} {'ms/token':>11} {'state/KV MiB':>14} {'peak RSS MiB':>13} "
          f"{'RSS model MiB':>14}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = sweep(args, work)
    result = {"command": " ".join(sys.argv), "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "header": header, "settings": vars(args), "shapes": SHAPES, "rows": rows}
    path = work / f"context_scaling-{args.cache}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    if args.plot and any("latency_ms" in r for r in rows):
        plot(rows, Path(args.plot), header)
        print(f"wrote {args.plot}")
    print(f"load average before {result['load_before']}, after {result['load_after']}")


if __name__ == "__main__":
    main()
