"""Training text for the built-in embedder: docstrings of the third-party Python packages installed here.

    python pipelines/embedder_corpus.py runs/embedder-corpus

writes ``text/<package>/<module>.txt`` (each module's docstrings, one paragraph block each: a coherent
document, so two spans of one are related and spans of two are not), ``heldout/`` (the same for 1
package in 20, chosen by a hash of its name, never trained on) and ``pairs.jsonl``: one
``{"query": <a docstring's summary line>, "positive": <the rest of it>}`` per documented function, class or
module of the training packages (summary -> body pairs are the label-free analogue of a query and the
passage that answers it).

What is read: the ``.py`` files under this interpreter's site-packages, except docstream itself; with
``--man-pages DIR`` (the cache ``pipelines/man_pages.py`` writes) the English manual pages too, each page a
document under ``text/man/`` and a ``{"query": <its NAME line's summary>, "positive": <its DESCRIPTION>}``
pair (the pages :func:`man_pages.held_out` holds out go to ``heldout/man/`` and make the ``manpages``
evaluation collection); with ``--dpkg-status`` (default ``/var/lib/dpkg/status`` where it exists) each
installed Debian package's (short description, long description) pair. Python's
standard library, the packages' README texts and the Debian copyright files are *not* read: those are the
evaluation collections of ``bench/retrieval_eval.py`` (``pydoc``, ``readmes`` and ``debian``), which must
stay unseen. Each text stays under its
own package's licence; this script only reads them where they are installed and redistributes nothing
(the trained weights are what docstream ships).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import man_pages  # noqa: E402

#: a docstring needs a summary of at least this many words and a body of at least this many characters
MIN_SUMMARY_WORDS, MIN_BODY_CHARS = 4, 80
#: characters kept per package (large packages would otherwise dominate), and the least a module needs
MAX_CHARS_PER_PACKAGE = 400_000
MIN_CHARS_PER_MODULE = 300
SKIP = {"docstream", "tests", "test", "_distutils_hack", "pip", "setuptools", "pkg_resources"}
_NOT_PROSE = re.compile(r"^\s*(>>>|\.\.\.|[-=~^]{4,}$)")


def docstrings(path: Path) -> list[str]:
    """The docstrings of a module file (module, classes, functions), cleaned; none when it does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef)))]
    found = []
    for node in nodes:
        text = ast.get_docstring(node)
        if text:
            lines = [line for line in text.splitlines() if not _NOT_PROSE.match(line)]
            found.append("\n".join(lines).strip())
    return [t for t in found if t]


def summary_pair(text: str) -> dict[str, str] | None:
    """``{"query": summary line, "positive": body}`` of a docstring that has both, else None."""
    summary, _, body = text.partition("\n")
    summary, body = summary.strip(), body.strip()
    if len(summary.split()) < MIN_SUMMARY_WORDS or len(body) < MIN_BODY_CHARS:
        return None
    return {"query": summary, "positive": body}


def held_out(package: str) -> bool:
    """1 package in 20, fixed by its name."""
    return hashlib.sha256(package.encode()).digest()[0] % 20 == 0


def description(text: str) -> str:
    """A rendered man page's DESCRIPTION section (its whole text when it has none)."""
    _, found, rest = text.partition("DESCRIPTION\n")
    return rest.strip() if found else text


def add_man_pages(cache: Path, out: Path) -> tuple[list[dict[str, str]], int, int]:
    """Write the pages of ``cache/pages.jsonl`` as documents; their summary pairs, characters trained on and
    held out."""
    pairs, chars = [], {"text": 0, "heldout": 0}
    for page in man_pages.load_pages(cache / "pages.jsonl"):
        split = "heldout" if man_pages.held_out(page.name) else "text"
        target = out / split / "man" / f"{page.name}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page.text + "\n", encoding="utf-8")
        chars[split] += len(page.text)
        body = description(page.text)
        if split == "text" and len(body) >= MIN_BODY_CHARS:
            pairs.append({"query": page.summary, "positive": body})
    return pairs, chars["text"], chars["heldout"]


def dpkg_pairs(status: Path) -> list[dict[str, str]]:
    """(short description, long description) of each package in a dpkg status file, one per description."""
    pairs, seen = [], set()
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        lines = stanza.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Description:")), None)
        if start is None:
            continue
        summary = lines[start].partition(":")[2].strip()
        body = []
        for line in lines[start + 1:]:
            if not line.startswith(" "):
                break
            body.append("" if line.strip() == "." else line.strip())
        text = "\n".join(body).strip()
        if summary in seen or len(summary.split()) < 2 or len(text) < MIN_BODY_CHARS:
            continue
        seen.add(summary)
        pairs.append({"query": summary, "positive": text})
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--man-pages", type=Path, help="the folder `python pipelines/man_pages.py DIR` wrote")
    parser.add_argument("--dpkg-status", type=Path, default=Path("/var/lib/dpkg/status"),
                        help="dpkg status file whose package descriptions become pairs (skipped when absent)")
    args = parser.parse_args()
    roots = sorted({Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")})
    packages: dict[str, list[tuple[Path, Path]]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            top = path.relative_to(root).parts[0]
            if top.endswith((".dist-info", ".egg-info")) or top.split(".")[0] in SKIP or top.startswith("_"):
                continue
            packages.setdefault(top.removesuffix(".py"), []).append((root, path))
    (args.out / "text").mkdir(parents=True, exist_ok=True)
    (args.out / "heldout").mkdir(parents=True, exist_ok=True)
    pairs, totals = [], {"text": 0, "heldout": 0}
    for package, paths in sorted(packages.items()):
        split, size = ("heldout" if held_out(package) else "text"), 0
        for root, path in paths:
            texts = docstrings(path)
            chars = sum(len(t) for t in texts)
            if chars < MIN_CHARS_PER_MODULE or size > MAX_CHARS_PER_PACKAGE:
                continue
            name = "__".join(path.relative_to(root).parts)
            target = args.out / split / package / f"{name.removesuffix('.py')}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
            size += chars
            if split == "text":
                pairs.extend(p for p in map(summary_pair, texts) if p is not None)
        totals[split] += size
    print(f"{len(packages)} packages: {totals['text']:,} characters of training text, {totals['heldout']:,} "
          f"held out, {len(pairs):,} summary pairs")
    if args.man_pages is not None:
        found, trained, held = add_man_pages(args.man_pages, args.out)
        pairs.extend(found)
        print(f"manual pages: {trained:,} characters of training text, {held:,} held out, {len(found):,} pairs")
    if args.dpkg_status.is_file():
        found = dpkg_pairs(args.dpkg_status)
        pairs.extend(found)
        print(f"{args.dpkg_status}: {len(found):,} description pairs")
    with (args.out / "pairs.jsonl").open("w", encoding="utf-8") as file:
        for pair in pairs:
            file.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"{len(pairs):,} pairs in {args.out / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()
