"""The command line as a whole: `docstream --help` and every `docstream <cmd> --help` import neither torch nor
FAISS, every flag has help, and flags are built from the settings classes."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from docstream.cli import build_parser
from docstream.commands.flags import add_fields, given

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["info", "convert", "run", "demo", "search", "index", "summarize", "probe", "train", "verify", "selftest"]

# run in a fresh interpreter: what `docstream [<cmd>] --help` imports, and every flag without help text
_HELP_SCRIPT = """
import argparse, json, sys
from docstream.cli import build_parser, main
parser = build_parser()
after_parser = sorted(m for m in ("torch", "faiss") if m in sys.modules)
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
no_help = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items() for a in p._actions
           if not a.help]
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code
print(json.dumps({"after_parser": after_parser, "code": code, "commands": sorted(sub.choices), "no_help": no_help,
                  "after_help": sorted(m for m in ("torch", "faiss") if m in sys.modules)}))
"""


def _help(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _HELP_SCRIPT, *argv, "--help"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_torch_nor_faiss(command):
    seen = _help(*([command] if command else []))
    assert seen["after_parser"] == [] and seen["after_help"] == [] and seen["code"] == 0
    assert seen["commands"] == sorted(COMMANDS)
    assert seen["no_help"] == []


def test_help_of_a_command_shows_the_settings_classes_choices_defaults_and_help():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "{fp32,bf16,fp16}" in text and "{auto,cpu,cuda,torch}" in text
    assert "tokens per chunk (default: 1024)" in text
    summarize = build_parser()._subparsers._group_actions[0].choices["summarize"].format_help()
    assert "nucleus sampling mass (1 = off) (default: 0.3)" in summarize  # the chat defaults, not the class's


def test_the_factory_flag_is_named_alike_on_search_and_index_and_the_old_name_is_hidden():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert "--factory" in choices["search"].format_help() and "--factory" in choices["index"].format_help()
    assert "--index" not in choices["search"].format_help()
    args = build_parser().parse_args(["search", "--run", "r", "q", "--index", "HNSW32"])
    assert args.factory == "HNSW32"


@pytest.mark.parametrize("command", ["search", "index", "summarize", "verify"])
def test_the_run_folder_is_args_out_on_every_command_that_reads_one(command):
    extra = ["query"] if command == "search" else []
    assert build_parser().parse_args([command, "--run", "runs/a", *extra]).out == "runs/a"


def test_quiet_is_one_flag_on_every_command_that_has_it():
    parser = build_parser()
    for command in ("run", "demo", "index", "probe", "train"):
        assert parser.parse_args([command, "--quiet"] + (["--run", "r"] if command == "index" else [])).quiet is True
    assert parser.parse_args(["train"]).quiet is None  # not given: the settings (file or default) decide


class _Toy(BaseModel):
    mode: Literal["fast", "slow"] = Field("fast", description="how to go")
    size: int = Field(8, description="how many, in %")
    names: list[str] = Field(default_factory=list, description="names to use")
    snap: bool = Field(True, description="snap to ends")
    path: Path | None = Field(None, description="a file")


def test_add_fields_builds_choices_types_help_and_negated_booleans():
    parser = argparse.ArgumentParser()
    add_fields(parser, _Toy, _Toy.model_fields)
    text = parser.format_help()
    assert "{fast,slow}" in text and "how many, in % (default: 8)" in text and "--no-snap" in text
    args = parser.parse_args(["--mode", "slow", "--size", "3", "--names", "a", "b", "--no-snap"])
    assert given(args, _Toy.model_fields) == {"mode": "slow", "size": 3, "names": ["a", "b"], "snap": False}
    assert given(parser.parse_args([]), _Toy.model_fields) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])


def test_a_field_without_description_is_refused():
    class Bare(BaseModel):
        size: int = 3

    with pytest.raises(ValueError, match="Bare.size has no description"):
        add_fields(argparse.ArgumentParser(), Bare, ["size"])


def test_the_folder_a_function_reads_or_writes_is_named_out_everywhere():
    import inspect

    from docstream.tasks.index import update_index
    from docstream.tasks.recall import write_results
    from docstream.tasks.search import Searcher, search
    from docstream.tasks.summarize import summarize
    from docstream.tasks.verify import verify_run

    for function in (update_index, Searcher, search, summarize, verify_run, write_results):
        assert "out" in inspect.signature(function).parameters, function.__qualname__
