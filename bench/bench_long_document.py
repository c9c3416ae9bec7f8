"""Constant memory over a million-token document: peak RSS, tokens/s and snapshot-writing time.

Streams one long document and one short one (each in a fresh process, through the real `run` with
snapshots and commits) and compares their peak resident memory. The text is the bundled sample corpus
repeated until the document has the requested number of tokens. Snapshot writing is timed by wrapping
`RunStore.commit` (the Parquet writes, checksums and fsyncs of every commit).

    python bench/bench_long_document.py                       # 1,000,000 vs 10,000 tokens
    python bench/bench_long_document.py --tokens 200000 --short 10000 --layers 4 --width 256
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[4]))
from docstream.stream import build_config, run
from docstream.store.run_store import RunStore
settings = json.loads(sys.argv[2])
spent = {"commit": 0.0}
original = RunStore.commit
def timed_commit(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return original(self, *args, **kwargs)
    finally:
        spent["commit"] += time.perf_counter() - start
RunStore.commit = timed_commit
start = time.perf_counter()
summary = run(build_config(None, settings))
total = time.perf_counter() - start
print(json.dumps({"tokens": summary.tokens, "seconds": total, "commit_seconds": spent["commit"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "out": sys.argv[3]}))
"""


def write_document(path: Path, n_tokens: int) -> None:
    """The sample corpus's texts, repeated until ``n_tokens`` World tokens (streamed to disk)."""
    from docstream.tokenizer import WorldTokenizer, default_world_vocab_path

    tokenizer = WorldTokenizer(default_world_vocab_path())
    pieces = [p.read_text() for p in sorted((ROOT / "docstream" / "data" / "sample_corpus").rglob("*.*"))]
    per_round = sum(len(tokenizer.encode(p + "\n\n")) for p in pieces)
    rounds = n_tokens // per_round + 1
    with open(path, "w") as f:
        for i in range(rounds):
            for p in pieces:
                f.write(p + "\n\n")


def measure(doc_dir: Path, out: Path, settings: dict, threads: int) -> dict:
    settings = dict(settings, input=str(doc_dir), out=str(out))
    proc = subprocess.run([sys.executable, "-c", WORKER, str(ROOT), json.dumps(settings), str(out), str(threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the long document")
    ap.add_argument("--short", type=int, default=10_000, help="tokens of the short document")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--chunk-len", type=int, default=1024)
    ap.add_argument("--snapshot-every", type=int, default=4)
    ap.add_argument("--commit-every", type=int, default=8,
                    help="chunks per commit: small enough that the short document commits mid-run too, so both "
                         "runs reach the commit path's steady state (its buffers scale with this, not with length)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from docstream.testing.checkpoints import save_random_checkpoint
    from docstream.tokenizer import default_world_vocab_path

    with tempfile.TemporaryDirectory(prefix="docstream-long-") as tmp:
        tmp = Path(tmp)
        model = save_random_checkpoint(tmp / "model.pth", "7", n_layer=args.layers, n_embd=args.width,
                                       head_size=64, vocab_size=65536, seed=0)
        settings = dict(model=str(model), tokenizer=str(default_world_vocab_path()), chunk_len=args.chunk_len,
                        snapshot_every=args.snapshot_every, commit_every=args.commit_every, batch_size=1,
                        quiet=True)
        results = {}
        for name, n in (("short", args.short), ("long", args.tokens)):
            doc_dir = tmp / name
            doc_dir.mkdir()
            write_document(doc_dir / f"{name}.txt", n)
            results[name] = measure(doc_dir, tmp / f"out-{name}", settings, args.threads)
            snapshots = sum(p.stat().st_size for p in (tmp / f"out-{name}" / "snapshots").glob("*.parquet"))
            results[name]["snapshot_mib"] = snapshots / 2**20

    print(f"RWKV-7 L={args.layers} C={args.width} (random weights), chunk {args.chunk_len}, snapshot every "
          f"{args.snapshot_every} chunks, commit every {args.commit_every} chunks, {args.threads} threads")
    print(f"{'document':>9} {'tokens':>10} {'seconds':>8} {'tok/s':>8} {'peak RSS MiB':>13} "
          f"{'snapshots MiB':>14} {'commit time':>12}")
    for name, r in results.items():
        print(f"{name:>9} {r['tokens']:>10,} {r['seconds']:>8.1f} {r['tokens'] / r['seconds']:>8.0f} "
              f"{r['peak_rss_mib']:>13.1f} {r['snapshot_mib']:>14.1f} {r['commit_seconds'] / r['seconds']:>11.1%}")
    growth = results["long"]["peak_rss_mib"] / results["short"]["peak_rss_mib"] - 1
    print(f"peak RSS of the long document vs the short one: {growth:+.1%}")


if __name__ == "__main__":
    main()
