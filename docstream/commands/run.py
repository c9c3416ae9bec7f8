"""``docstream run`` (stream a corpus into a run folder) and ``docstream demo`` (the same on the sample corpus)."""
from __future__ import annotations

import argparse

from docstream.commands.flags import add_fields, add_quiet, given
from docstream.store.config import RunConfig

#: RunConfig fields given as flags (quiet is added by add_quiet, like on every command)
RUN_FIELDS = ("model", "tokenizer", "input", "out", "input_format", "id_field", "text_field", "chunk_len",
              "batch_size", "snapshot_every", "commit_every", "dtype", "device", "backend", "strategy", "cuda_graphs",
              "engine", "address", "workers")


def register(sub: argparse._SubParsersAction) -> None:
    rn = sub.add_parser("run", help="stream a corpus through a model into OUT (re-run to resume)")
    rn.add_argument("--config", help="YAML/TOML/JSON file of run settings (flags override it)")
    add_fields(rn, RunConfig, RUN_FIELDS, flags={"input_format": "--format"})
    add_quiet(rn, RunConfig.model_fields["quiet"].description)
    rn.add_argument("--no-index", action="store_true",
                    help="do not bring the run's search indexes (lexical and embedder) up to date at the end "
                         "(docstream index or the first search does it later)")
    rn.add_argument("--json", action="store_true",
                    help="print the summary as JSON (counts, tok/s, seconds per stage, the model's busy share)")
    rn.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="stream the bundled sample corpus end to end (the built-in model)")
    demo.add_argument("--out", default="docstream-demo", help="output folder (default: ./docstream-demo)")
    add_quiet(demo, "no progress bar")
    demo.set_defaults(func=_cmd_demo)


def _cmd_run(args: argparse.Namespace) -> int:
    from docstream.store.config import build_config
    from docstream.stream.run import run

    config = build_config(args.config, given(args, (*RUN_FIELDS, "quiet")))
    if args.json:  # the JSON alone on stdout: no progress bar
        config = config.model_copy(update={"quiet": True})
    summary = run(config)  # Ray's errors end the command with their code from docstream.cli.EXIT_CODES
    if not config.quiet:
        print("\n".join(summary.lines(config.out)))
    report = summary.as_dict()
    if not args.no_index:
        from docstream.commands.search import update_indexes
        from docstream.tasks.config import IndexConfig

        # the embedder runs where the run's model ran (a Ray driver may have no GPU: there, on its CPU)
        device = config.device if config.engine == "local" else "cpu"
        lines = update_indexes(config.out, IndexConfig(), progress=not config.quiet, device=device)
        report["index"] = lines
        if not config.quiet:
            print("\n".join(lines))
    if args.json:
        import json

        print(json.dumps(report, indent=1))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from docstream.demo import run_demo

    return run_demo(args.out, quiet=bool(args.quiet))
