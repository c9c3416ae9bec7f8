"""``docstream search`` (the chunks of a run nearest to a query) and ``docstream index`` (build or update the
FAISS index they are searched in)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

from docstream.commands.flags import add_fields, add_quiet, add_run_folder, given
from docstream.tasks.config import IndexConfig, SearchConfig

if TYPE_CHECKING:
    from docstream.tasks.search import Hit

_SEARCH_FIELDS = ("k", "pooling", "factory", "metric", "params", "update", "device", "model", "tokenizer")


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("search", help="find the chunks of a run nearest to a query text")
    add_run_folder(sp)
    sp.add_argument("query", help=SearchConfig.model_fields["query"].description)
    add_fields(sp, SearchConfig, _SEARCH_FIELDS, flags={"k": "-k"})
    # the factory was --index on search until the flag got the name it has on `docstream index`
    sp.add_argument("--index", dest="factory", help=argparse.SUPPRESS)
    sp.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    sp.set_defaults(func=_cmd_search)

    ix = sub.add_parser("index", help="build or update the FAISS index of a run's chunk vectors")
    add_run_folder(ix)
    add_fields(ix, IndexConfig, IndexConfig.model_fields)
    add_quiet(ix)
    ix.set_defaults(func=_cmd_index)


def _cmd_search(args: argparse.Namespace) -> int:
    from docstream.tasks.search import Searcher

    if args.k is not None and args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    config = SearchConfig(query=args.query, **given(args, _SEARCH_FIELDS))
    searcher = Searcher(args.out, config.pooling, config.factory, config.metric, update=config.update,
                        params=config.params, device=config.device, model=config.model, tokenizer=config.tokenizer)
    print_hits(searcher.search(config.query, config.k), args.json)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from docstream.tasks.index import update_index

    config = IndexConfig(**given(args, IndexConfig.model_fields))
    result = update_index(args.out, config.pooling, config.factory, config.metric, rebuild=config.rebuild,
                          progress=not args.quiet)
    meta = result.meta
    print(f"{meta.pooling} index {meta.factory!r} ({meta.metric}, {meta.dimension}-d) in {result.path}: "
          f"{meta.count} vectors, {result.added} added, up to commit {meta.seq}")
    return 0


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
