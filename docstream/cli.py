"""The ``docstream`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from docstream.defaults import default_model_path
    from docstream.model import load_model

    if args.model is None:
        args.model = default_model_path()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model      {args.model}")
    print(f"version    RWKV-{c.version}")
    print(f"layers     {c.n_layer}   width {c.n_embd}   attention {c.dim_att}   ffn {c.dim_ffn}")
    if c.head_size:
        print(f"heads      {c.n_head} x {c.head_size}")
    if c.lora:
        print("low-rank   " + ", ".join(f"{k} {v}" for k, v in sorted(c.lora.items())))
    print(f"vocabulary {c.vocab_size}")
    print(f"parameters {n_params / 1e6:.1f} M ({args.dtype} on {args.device})")
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from docstream.selftest import run_selftest

    return 0 if run_selftest(args.versions.split(","), backend=args.backend, tokens=args.tokens) else 1


def _cmd_run(args: argparse.Namespace) -> int:
    from docstream.store.config import build_config
    from docstream.stream.ray_engine import RayUnavailableError, WorkerFailedError
    from docstream.stream.run import run

    overrides = {name: getattr(args, name) for name in
                 ("model", "tokenizer", "input", "out", "input_format", "id_field", "text_field", "chunk_len",
                  "batch_size", "snapshot_every", "commit_every", "dtype", "device", "backend", "engine",
                  "address", "workers")}
    overrides["quiet"] = True if args.quiet else None
    config = build_config(args.config, overrides)
    try:
        summary = run(config)
    except (RayUnavailableError, WorkerFailedError) as err:
        print(f"docstream: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, RayUnavailableError) else 4
    if not config.quiet:
        print("\n".join(summary.lines(config.out)))
    if not args.no_index:
        from docstream.tasks.index import read_meta, update_index

        meta = read_meta(config.out)
        result = update_index(config.out, factory=meta.factory if meta else "Flat",
                              metric=meta.metric if meta else "cosine")
        if not config.quiet:
            print(f"index {result.path}: {result.meta.count} vectors ({result.added} new, "
                  f"{result.meta.factory}, {result.meta.pooling} pooling)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from docstream.tasks.verify import print_report, verify_run

    report = verify_run(args.run_dir, repair=args.repair)
    print_report(report, args.json)
    return report.exit_code


def _cmd_demo(args: argparse.Namespace) -> int:
    from docstream.demo import run_demo

    return run_demo(args.out, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docstream", description="Long-document streaming over RWKV models.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe an RWKV checkpoint")
    info.add_argument("--model", help="BlinkDL .pth checkpoint (default: the built-in model)")
    info.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    info.add_argument("--device", default="cpu")
    info.set_defaults(func=_cmd_info)

    rn = sub.add_parser("run", help="stream a corpus through a model into OUT (re-run to resume)")
    rn.add_argument("--model", help="BlinkDL .pth checkpoint (default: the built-in model)")
    rn.add_argument("--tokenizer", help="World vocabulary .txt or Hugging Face tokenizer .json")
    rn.add_argument("--input", help="a directory of .txt/.md files, a .jsonl or a .parquet file")
    rn.add_argument("--out", help="output directory; re-running on it resumes")
    rn.add_argument("--config", help="YAML/TOML/JSON file of run settings (flags override it)")
    rn.add_argument("--format", dest="input_format", choices=["auto", "text", "jsonl", "parquet"])
    rn.add_argument("--id-field", help="JSONL/Parquet field holding the document id (default: id)")
    rn.add_argument("--text-field", help="JSONL/Parquet field holding the text (default: text)")
    rn.add_argument("--chunk-len", type=int, help="tokens per chunk (default 1024)")
    rn.add_argument("--batch-size", type=int, help="documents streamed at once (default 8)")
    rn.add_argument("--snapshot-every", type=int, help="snapshot every k chunks and at each document's end (default 4)")
    rn.add_argument("--commit-every", type=int, help="commit outputs every n chunks (default 64)")
    rn.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    rn.add_argument("--device", help="cpu or cuda[:N]")
    rn.add_argument("--backend", choices=["auto", "cpu", "cuda", "torch"])
    rn.add_argument("--engine", choices=["local", "ray"],
                    help="local (default): this process; ray: shard documents across Ray workers")
    rn.add_argument("--address", help="with --engine ray: the Ray cluster to join (host:port, or auto); "
                                      "default: start a local Ray instance")
    rn.add_argument("--workers", type=int, help="with --engine ray: workers, one model each "
                                                "(default 2; one GPU each on cuda)")
    rn.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    rn.add_argument("--no-index", action="store_true",
                    help="do not bring the run's FAISS index up to date at the end (docstream index does it later)")
    rn.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="stream the bundled sample corpus end to end (the built-in model)")
    demo.add_argument("--out", default="docstream-demo", help="output directory (default ./docstream-demo)")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    from docstream.tasks.recall import add_probe_command
    from docstream.tasks.search import add_search_command
    from docstream.tasks.summarize import add_summarize_command
    from docstream.train.command import add_train_command

    add_search_command(sub)
    add_summarize_command(sub)
    add_probe_command(sub)
    add_train_command(sub)

    vf = sub.add_parser("verify", help="check a run folder's committed files and its FAISS indexes; exit 1 when "
                                       "something is damaged")
    vf.add_argument("--run", dest="run_dir", required=True, metavar="OUT", help="output directory of a run")
    vf.add_argument("--repair", action="store_true", help="rebuild damaged indexes and update stale ones (the "
                                                          "run's own files are never changed)")
    vf.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    vf.set_defaults(func=_cmd_verify)

    st = sub.add_parser("selftest", help="check chunked, token-by-token and split streaming agree on random "
                                         "checkpoints of every RWKV version, and time them")
    st.add_argument("--versions", default="4,5.2,6,7", help="comma-separated RWKV versions (default: all)")
    st.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "torch"])
    st.add_argument("--tokens", type=int, default=512, help="sequence length to stream (default 512)")
    st.set_defaults(func=_cmd_selftest)
    return parser


#: exit codes of the errors a command can end with (the first matching class wins)
EXIT_CODES = (("docstream.store.run_store", "RunLockedError", 3), ("docstream.train.loop", "TrainingLockedError", 3),
              ("docstream.files", "DiskFullError", 5), ("docstream.kernels.build", "BuildError", 6))


def exit_code(err: BaseException) -> int | None:
    """The exit code for ``err``, or None when it is a bug to show with its traceback."""
    if isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return 2
    for module, name, code in EXIT_CODES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(err, cls):
            return code
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        code = exit_code(err)
        if code is None:
            raise
        print(f"docstream: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
