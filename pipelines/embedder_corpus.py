"""Training text for the built-in embedder: docstrings of the third-party Python packages installed here.

    python pipelines/embedder_corpus.py runs/embedder-corpus

writes ``text/<package>/<module>.txt`` (each module's docstrings, one paragraph block each: a coherent
document, so two spans of one are related and spans of two are not), ``heldout/`` (the same for 1
package in 20, chosen by a hash of its name, never trained on) and ``pairs.jsonl``: one
``{"query": <a docstring's summary line>, "positive": <the rest of it>}`` per documented function, class or
module of the training packages (summary -> body pairs are the label-free analogue of a query and the
passage that answers it).

What is read: the ``.py`` files under this interpreter's site-packages, except docstream itself. Python's
standard library and the packages' README texts are *not* read: those are the evaluation collections of
``bench/retrieval_eval.py`` (``pydoc`` and ``readmes``), which must stay unseen. Each text stays under its
own package's licence; this script only reads them where they are installed and redistributes nothing
(the trained weights are what docstream ships).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sysconfig
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
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
    with (args.out / "pairs.jsonl").open("w", encoding="utf-8") as file:
        for pair in pairs:
            file.write(json.dumps(pair, ensure_ascii=False) + "\n")
    print(f"{len(packages)} packages: {totals['text']:,} characters of training text, {totals['heldout']:,} "
          f"held out, {len(pairs):,} summary pairs in {args.out / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()
