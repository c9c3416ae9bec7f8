"""``docstream summarize``: summaries of a run's documents from their snapshots, printed as they are made."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from docstream.commands.flags import add_fields, add_run_folder, given
from docstream.tasks.config import DEFAULT_SAMPLING, SamplingConfig, SummarizeConfig

if TYPE_CHECKING:
    from docstream.tasks.summarize import Summary

_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty",
                    "penalty_decay", "seed", "stop")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarize", help="summarize documents of a run from their snapshots")
    add_run_folder(p)
    add_fields(p, SummarizeConfig, SummarizeConfig.model_fields, flags={"doc_ids": "--doc", "at_chunk": "--at"},
               options={"doc_ids": {"action": "append", "nargs": None, "metavar": "ID"},
                        "at_chunk": {"metavar": "CHUNK"}})
    add_fields(p, SamplingConfig, _SAMPLING_FIELDS, defaults=DEFAULT_SAMPLING,
               options={"stop": {"action": "append", "nargs": None,
                                 "help": "stop string, \\n for a newline (repeat; default: the template's)"}})
    p.set_defaults(func=_cmd_summarize)


def _cmd_summarize(args: argparse.Namespace) -> int:
    from docstream.tasks.summarize import summarize

    options = SummarizeConfig(**given(args, SummarizeConfig.model_fields))
    chosen = given(args, _SAMPLING_FIELDS)
    chosen["stop"] = [_unescape(s) for s in chosen.get("stop", [])]
    sampling = SamplingConfig(**{**DEFAULT_SAMPLING.model_dump(), **chosen})
    printer = TerminalPrinter()
    result = summarize(args.out, sampling=sampling, on_token=printer.token, on_finish=printer.finish,
                       **options.model_dump())
    n = len(result.summaries)
    print(f"{n} {'summary' if n == 1 else 'summaries'} written to {result.path}")
    return 0


def _unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed on a command line as the newline and tab they stand for."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


class TerminalPrinter:
    """Prints summaries one after another: one document's text live, the others' once it is done."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.live: str | None = None
        self.buffered: dict[str, list[str]] = {}
        self.waiting: list[Summary] = []

    def token(self, doc_id: str, _token: int, text: str) -> None:
        if self.live is None:
            self._start(doc_id)
        if doc_id == self.live:
            self._write(text)
        else:
            self.buffered.setdefault(doc_id, []).append(text)

    def finish(self, summary: Summary) -> None:
        if self.live is None:
            self._start(summary.doc_id)
        if summary.doc_id != self.live:
            self.waiting.append(summary)
            return
        self._end(summary)
        for done in self.waiting:
            self._start(done.doc_id)
            self._end(done)
        self.waiting.clear()

    def _start(self, doc_id: str) -> None:
        self.live = doc_id
        self._write(f"== {doc_id} ==\n" + "".join(self.buffered.pop(doc_id, [])))

    def _end(self, summary: Summary) -> None:
        self._write(f"\n[{summary.finish_reason}, {len(summary.tokens)} tokens]\n\n")
        self.live = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
