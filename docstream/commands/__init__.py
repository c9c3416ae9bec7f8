"""The commands wing: one module per group of ``docstream`` commands.

Each module has ``register(subparsers)``, which adds its commands with flags built from the settings
classes (:mod:`docstream.commands.flags`) and sets ``func`` to a function that imports the heavy
modules (torch, FAISS, pyarrow) only when the command runs. Registering imports nothing heavy, so
``docstream --help`` is fast; ``tests/test_cli.py`` checks it in a fresh interpreter.
"""
from __future__ import annotations

import argparse
import importlib

#: the command modules, in the order their commands are listed by ``docstream --help``
MODULES = ("docstream.commands.model", "docstream.commands.run", "docstream.commands.search",
           "docstream.commands.summarize", "docstream.commands.probe", "docstream.commands.train",
           "docstream.commands.checks")


def register_all(subparsers: argparse._SubParsersAction) -> None:
    """Add every command to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    for module in MODULES:
        importlib.import_module(module).register(subparsers)
