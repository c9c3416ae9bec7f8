"""``docstream probe``: a recall probe (passkey or needle in a haystack) over context lengths and needle depths."""
from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from docstream.commands.flags import add_fields, add_quiet, given
from docstream.store.config import RunConfig
from docstream.tasks.config import ProbeConfig
from docstream.tasks.heatmap import METRICS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="recall probe (passkey / needle in a haystack) over context lengths "
                                     "and needle depths, with a heatmap")
    add_fields(p, RunConfig, ("model", "tokenizer"))
    # lengths and depths are typed as text ("512,4k") and parsed by the command
    add_fields(p, ProbeConfig, ProbeConfig.model_fields, flags={"haystack_format": "--format", "snap_to_sentence": "--no-snap"},
               options={"lengths": {"type": str, "nargs": None}, "depths": {"type": str, "nargs": None}})
    p.add_argument("--metric", default="accuracy", choices=sorted(METRICS),
                   help="what the heatmap shows (default: accuracy)")
    p.add_argument("--out", help="output folder (default: probes/<model>-<task>-<timestamp>)")
    add_fields(p, RunConfig, ("dtype", "device", "backend", "strategy"))
    add_quiet(p)
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from docstream.commands.model import placement_args
    from docstream.defaults import resolve_model_files
    from docstream.model import load_model
    from docstream.tasks.recall import parse_depths, parse_lengths, probe, write_results
    from docstream.tokenizer import load_tokenizer

    model_path, tokenizer_path = resolve_model_files(args.model, args.tokenizer)
    settings = given(args, ProbeConfig.model_fields)
    if args.lengths is not None:
        settings["lengths"] = parse_lengths(args.lengths)
    if args.depths is not None:
        settings["depths"] = parse_depths(args.depths)
    config = ProbeConfig(**settings)
    loading = RunConfig.model_fields
    tokenizer = load_tokenizer(tokenizer_path)
    model = load_model(model_path, **placement_args(args), backend=args.backend or loading["backend"].default)
    name = "default" if args.model is None else model_path.stem
    out = Path(args.out) if args.out else Path("probes") / f"{name}-{config.task}-{datetime.now():%Y%m%d-%H%M%S}"
    result = probe(model, tokenizer, config, model_name=name, progress=not args.quiet)
    files = write_results(result, out, args.metric)
    for cell in result.cells:
        print(f"length {cell['length']:>8}  depth {cell['depth']:>5g}%  accuracy {cell['accuracy']:.2f}  "
              f"logprob/token {cell['mean_logprob_per_token']:8.3f}  "
              f"first-token rank {cell['mean_first_token_rank']:.0f}")
    print(f"results in {out} (heatmap {files['heatmap'].name})")
    return 0
