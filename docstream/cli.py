"""The ``docstream`` command line: the parser (commands live in :mod:`docstream.commands`), the table of
exit codes, and ``main``."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The ``docstream`` parser with every command (see :mod:`docstream.commands`); imports nothing heavy."""
    from docstream.commands import register_all

    parser = argparse.ArgumentParser(prog="docstream", description="Long-document streaming over RWKV models.")
    register_all(parser.add_subparsers(dest="command", required=True))
    return parser


#: exit codes of the errors a command can end with (the first matching class wins)
EXIT_CODES = (("docstream.stream.ray_engine", "RayUnavailableError", 2),
              ("docstream.store.run_store", "RunLockedError", 3), ("docstream.train.loop", "TrainingLockedError", 3),
              ("docstream.stream.ray_engine", "WorkerFailedError", 4), ("docstream.files", "DiskFullError", 5),
              ("docstream.kernels.build", "BuildError", 6))


def exit_code(err: BaseException) -> int | None:
    """The exit code for ``err``, or None when it is a bug to show with its traceback."""
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                        PermissionError)):
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
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        code = exit_code(err)
        if code is None:
            raise
        print(f"docstream: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
