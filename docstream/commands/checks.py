"""``docstream verify`` (check a run folder and its indexes) and ``docstream selftest`` (streaming paths agree)."""
from __future__ import annotations

import argparse

from docstream.commands.flags import add_fields, add_run_folder
from docstream.store.config import RunConfig


def register(sub: argparse._SubParsersAction) -> None:
    vf = sub.add_parser("verify", help="check a run folder's committed files and its FAISS indexes; exit 1 when "
                                       "something is damaged")
    add_run_folder(vf)
    vf.add_argument("--repair", action="store_true", help="rebuild damaged indexes and update stale ones (the "
                                                          "run's own files are never changed)")
    vf.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    vf.set_defaults(func=_cmd_verify)

    st = sub.add_parser("selftest", help="check chunked, token-by-token and split streaming agree on random "
                                         "checkpoints of every RWKV version, and time them")
    st.add_argument("--versions", default="4,5.2,6,7", help="comma-separated RWKV versions (default: all)")
    add_fields(st, RunConfig, ("backend",))
    st.add_argument("--tokens", type=int, default=512, help="sequence length to stream (default: 512)")
    st.set_defaults(func=_cmd_selftest)


def _cmd_verify(args: argparse.Namespace) -> int:
    from docstream.tasks.verify import print_report, verify_run

    report = verify_run(args.out, repair=args.repair)
    print_report(report, args.json)
    return report.exit_code


def _cmd_selftest(args: argparse.Namespace) -> int:
    from docstream.selftest import run_selftest

    backend = args.backend or RunConfig.model_fields["backend"].default
    return 0 if run_selftest(args.versions.split(","), backend=backend, tokens=args.tokens) else 1
