"""``docstream search`` (the chunks of a run that best answer a query, or a file of queries) and ``docstream
index`` (build or update the lexical and dense indexes they are searched in)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TextIO

from docstream.commands.flags import add_fields, add_quiet, add_run_folder, given
from docstream.tasks.config import IndexConfig, SearchConfig

if TYPE_CHECKING:
    from docstream.tasks.search import Hit

_SEARCH_FIELDS = ("queries", "k", "mode", "pooling", "embedder", "factory", "metric", "params", "update", "device",
                  "model", "tokenizer")
#: options that apply to the run's own model, not to the embedder
_RUN_MODEL_FIELDS = ("device", "model", "tokenizer")
#: queries searched per batch of --queries
QUERY_BATCH = 64


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("search", help="find the chunks of a run that best answer a query (hybrid: BM25 + vectors)",
                        description="Search a run's chunks. The default, hybrid, fuses a BM25 ranking of the "
                                    "chunks' texts (each chunk's score helped by its document's) with a ranking by "
                                    "vectors from the built-in embedder (reciprocal rank fusion, k=60, the dense "
                                    "ranking weighted 0.2, and not at all when BM25's best document scores 10%% above "
                                    "the next); --mode dense "
                                    "or lexical uses one alone. "
                                    "Indexes are brought up to the run's latest commit first.")
    add_run_folder(sp)
    sp.add_argument("query", nargs="?", help=SearchConfig.model_fields["query"].description)
    add_fields(sp, SearchConfig, _SEARCH_FIELDS, flags={"k": "-k"})
    # the factory was --index on search until the flag got the name it has on `docstream index`
    sp.add_argument("--index", dest="factory", help=argparse.SUPPRESS)
    sp.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    sp.set_defaults(func=_cmd_search)

    ix = sub.add_parser("index", help="build or update the lexical and dense indexes of a run")
    add_run_folder(ix)
    add_fields(ix, IndexConfig, IndexConfig.model_fields)
    add_quiet(ix)
    ix.set_defaults(func=_cmd_index)


def _cmd_search(args: argparse.Namespace) -> int:
    from docstream.settings import validated
    from docstream.tasks.search import Searcher

    if args.k is not None and args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    config = validated(SearchConfig, {"query": args.query, **given(args, _SEARCH_FIELDS)}, "search")
    options = {name: getattr(config, name) for name in _RUN_MODEL_FIELDS if getattr(config, name) is not None}
    searcher = Searcher(args.out, config.pooling, config.factory, config.metric, mode=config.mode,
                        update=config.update, params=config.params, embedder=config.embedder, **options)
    if config.queries is None:
        print_hits(searcher.search(config.query, config.k), args.json)
        return 0
    batch: list[tuple[str, str]] = []
    for item in _read_queries(config.queries):
        batch.append(item)
        if len(batch) == QUERY_BATCH:
            _print_batch(searcher, batch, config.k)
            batch = []
    _print_batch(searcher, batch, config.k)
    return 0


def _print_batch(searcher, batch: list[tuple[str, str]], k: int) -> None:
    if not batch:
        return
    for (query_id, query), hits in zip(batch, searcher.search_many([q for _, q in batch], k)):
        line = {"id": query_id, "query": query, "hits": [hit.to_json() for hit in hits]}
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _read_queries(path: Path) -> Iterator[tuple[str, str]]:
    """(id, query) of each non-blank line of ``path``: JSON Lines objects with "query" (or "text") and an
    optional "id" when the file ends in .jsonl, else one query per line (its id is the line number)."""
    if not path.is_file():
        raise FileNotFoundError(f"queries file {str(path)!r} does not exist")
    as_json = path.suffix.lower() in (".jsonl", ".ndjson")
    with path.open(encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                yield _parse_query(line, number, path) if as_json else (str(number), line.rstrip("\n"))
        except UnicodeDecodeError as err:
            raise ValueError(f"queries file {str(path)!r} is not UTF-8 text ({err})") from None


def _parse_query(line: str, number: int, path: Path) -> tuple[str, str]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {number} is not JSON ({err}); write one object per line, like "
                         f'{{"id": "q1", "query": "text"}}') from None
    query = item.get("query", item.get("text")) if isinstance(item, dict) else None
    if not isinstance(query, str):
        raise ValueError(f"{path} line {number} has no \"query\" string; write one object per line, like "
                         f'{{"id": "q1", "query": "text"}}')
    return str(item.get("id", number)), query


def _cmd_index(args: argparse.Namespace) -> int:
    config = IndexConfig(**given(args, IndexConfig.model_fields))
    for line in update_indexes(args.out, config, progress=not args.quiet):
        print(line)
    return 0


def update_indexes(out: str | Path, config: IndexConfig, progress: bool = False, device: str = "cpu") -> list[str]:
    """Bring the run's lexical index (unless ``config.lexical`` is off) and its ``config.pooling`` dense index up
    to date (an embedder embeds on ``device``); one line per index saying what was done."""
    from docstream.tasks.index import update_index

    lines = []
    if config.lexical:
        from docstream.tasks.lexical import update_lexical

        lexical = update_lexical(out, rebuild=config.rebuild, progress=progress)
        lines.append(f"lexical index in {lexical.path}: {lexical.meta.count} chunks of {lexical.meta.documents} "
                     f"documents, {lexical.added} added, up to commit {lexical.meta.seq}")
    result = update_index(out, config.pooling, config.factory, config.metric, rebuild=config.rebuild,
                          progress=progress, embedder=config.embedder, device=device)
    meta = result.meta
    lines.append(f"{meta.pooling} index {meta.factory!r} ({meta.metric}, {meta.dimension}-d) in {result.path}: "
                 f"{meta.count} vectors, {result.added} added, up to commit {meta.seq}")
    return lines


def print_hits(hits: list[Hit], as_json: bool, file: TextIO | None = None) -> None:
    """Print ``hits`` as a table, or as JSON lines (one object per hit), to ``file`` (default stdout)."""
    from docstream.tasks.search import format_hits

    file = file if file is not None else sys.stdout
    if as_json:
        for hit in hits:
            print(json.dumps(hit.to_json(), ensure_ascii=False), file=file)
    elif hits:
        print(format_hits(hits), file=file)
    else:
        print("no results", file=file)
