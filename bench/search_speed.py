"""How fast `docstream search` answers from the command line: one query, and a file of queries.

    python bench/search_speed.py [--run OUT] [--queries 1000] [--repeats 5]

Without ``--run`` it makes the demo's run (``docstream demo``: the sample corpus, built-in model) in a temp
folder. Then, each in a fresh process as a user would type it, with the indexes already up to date:

* one query, ``docstream search --run OUT "<query>"`` (hybrid, the default), ``--repeats`` times: the wall
  time from process start to the printed table, median and range;
* ``docstream search --run OUT --queries FILE`` with ``--queries`` queries (sentences of the sample corpus,
  5-25 words, in a shuffled fixed order), for each mode: queries per second over the whole command
  (start-up included) and over the searching alone (start-up measured by a one-query file subtracted).

Start-up is what a single query pays: Python, numpy, FAISS, tantivy, the tokenizer and the embedder's
weights (read without torch). Set the thread count with OMP_NUM_THREADS etc. as you would for use.
"""
from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUERY = "a ghost walks on the castle platform at midnight"


def cli(*args: str) -> float:
    """Seconds one `docstream` command takes, start to exit (its output discarded)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "docstream.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"docstream {' '.join(args)} failed:\n{done.stderr}")
    return seconds


def sentences(count: int) -> list[str]:
    """``count`` sentences of 5-25 words from the sample corpus (repeated when it has fewer), shuffled."""
    text = " ".join(p.read_text() for p in sorted((ROOT / "docstream" / "data" / "sample_corpus").rglob("*.*")))
    found = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text) if 5 <= len(s.split()) <= 25]
    random.Random(0).shuffle(found)
    return [found[i % len(found)] for i in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a run folder (default: the demo's run, made in a temp folder)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.run
        if out is None:
            out = Path(tmp) / "demo"
            print(f"making the demo's run in {out} ...", flush=True)
            cli("demo", "--out", str(out), "--quiet")
        cli("search", "--run", str(out), QUERY)  # indexes up to date, files in the page cache
        times = [cli("search", "--run", str(out), QUERY) for _ in range(args.repeats)]
        print(f"one query, hybrid: median {statistics.median(times):.2f} s (range {min(times):.2f}-{max(times):.2f} "
              f"s, {args.repeats} runs)")
        many, one = Path(tmp) / "queries.txt", Path(tmp) / "one.txt"
        many.write_text("\n".join(sentences(args.queries)) + "\n")
        one.write_text(QUERY + "\n")
        for mode in ("hybrid", "dense", "lexical"):
            start_up = min(cli("search", "--run", str(out), "--queries", str(one), "--mode", mode) for _ in range(3))
            whole = min(cli("search", "--run", str(out), "--queries", str(many), "--mode", mode) for _ in range(2))
            print(f"--queries, {mode}: {args.queries} queries in {whole:.2f} s = {args.queries / whole:.0f} queries/s "
                  f"with start-up, {args.queries / max(whole - start_up, 1e-9):.0f} queries/s searching "
                  f"(start-up {start_up:.2f} s)")


if __name__ == "__main__":
    main()
