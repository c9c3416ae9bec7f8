"""English manual pages installed on this machine, as plain text: training text for the built-in embedder
and, for the pages it holds out, the ``manpages`` evaluation collection of ``bench/beir_collections.py``.

    python pipelines/man_pages.py runs/man-pages          # renders every page once into a JSONL cache

Each page of ``/usr/share/man/man[1-8]`` (the English ones; translations live in other folders) is
rendered with ``groff -man -Tutf8`` (no hyphenation, 200-column lines) and split into its sections. A
page is kept when its NAME line has the usual ``name \\- what it does`` form and its text has at least
``MIN_CHARS`` characters; ``summary`` is what it does (the part after the dash). Symbolic links and
``.so`` redirections are other pages' names, so they are skipped, and so are all but ``MAX_PER_FAMILY``
pages of one family (the first word of the page name before a ``-`` or ``_``, e.g. 16,000 ``gcloud-*``
pages).

One page in 20, chosen by a hash of its name (:func:`held_out`), is never trained on: those pages make the
``manpages`` collection. Each page stays under its own package's licence; this reads them where they are
installed and redistributes nothing.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("man1", "man2", "man3", "man5", "man7", "man8")
MIN_CHARS = 400
#: characters kept of one page (a few pages, bash's or perl's, run to hundreds of thousands)
MAX_CHARS = 40_000
MAX_PER_FAMILY = 40
_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/&()-]*$")
_NAME_LINE = re.compile(r"^(?P<names>.+?)\s+[-\u2010\u2011\u2013\u2014\u2212]+\s+(?P<summary>\S.*)$")


@dataclass(frozen=True)
class ManPage:
    """One rendered page: ``name`` (``ls.1``), ``names`` (what its NAME line documents), ``summary`` (what
    the NAME line says it does) and ``text`` (every section but NAME, headings kept)."""

    name: str
    names: str
    summary: str
    text: str


def held_out(name: str) -> bool:
    """1 page in 20, fixed by its file name without ``.gz`` (e.g. ``ls.1``)."""
    return hashlib.sha256(name.encode()).digest()[0] % 20 == 0


def family(name: str) -> str:
    return re.split(r"[-_.:]", name, maxsplit=1)[0].lower()


def page_files(root: Path = MAN_ROOT) -> list[Path]:
    """The page files to read: regular files of :data:`SECTIONS`, at most :data:`MAX_PER_FAMILY` per family
    (the first in name order)."""
    kept, per_family = [], {}
    for section in SECTIONS:
        folder = root / section
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue
            count = per_family.get(family(path.name), 0)
            if count < MAX_PER_FAMILY:
                per_family[family(path.name)] = count + 1
                kept.append(path)
    return kept


def render(path: Path) -> str | None:
    """The page as plain text (no bold, underline or colour), None for a redirection or a failure."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw.lstrip().startswith(b".so "):
        return None
    done = subprocess.run(["groff", "-man", "-Tutf8", "-P", "-cbou", "-rHY=0", "-rLL=200n"], input=raw,
                          capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def parse(name: str, rendered: str) -> ManPage | None:
    """Split rendered text into sections; None unless it has a usable NAME line and enough text."""
    lines = rendered.splitlines()
    if len(lines) < 4:
        return None
    lines = lines[1:-1]  # the running header and footer
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line and not line[0].isspace() and _HEADING.match(line.strip()):
            sections.append((line.strip(), []))
        elif sections:
            sections[-1][1].append(line.strip())
    if not sections or sections[0][0] != "NAME":
        return None
    match = _NAME_LINE.match(" ".join(w for w in sections[0][1] if w))
    if match is None:
        return None
    body = []
    for heading, content in sections[1:]:
        paragraph = re.sub(r"\n{3,}", "\n\n", "\n".join(content)).strip()
        if paragraph:
            body.append(f"{heading}\n{paragraph}")
    text = "\n\n".join(body)[:MAX_CHARS]
    summary = match.group("summary").strip()
    if len(text) < MIN_CHARS or len(summary.split()) < 2:
        return None
    return ManPage(name, match.group("names").strip(), summary, text)


def read_pages(root: Path = MAN_ROOT, workers: int = 2) -> list[ManPage]:
    """Every usable page under ``root``, in file order."""
    files = page_files(root)

    def one(path: Path) -> ManPage | None:
        rendered = render(path)
        return None if rendered is None else parse(path.name.removesuffix(".gz"), rendered)

    with ThreadPoolExecutor(workers) as pool:
        return [page for page in pool.map(one, files) if page is not None]


def load_pages(cache: Path) -> list[ManPage]:
    """The pages of the JSONL cache ``cache`` (made by this script's ``main``)."""
    with cache.open(encoding="utf-8") as file:
        return [ManPage(**json.loads(line)) for line in file if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for pages.jsonl")
    parser.add_argument("--root", type=Path, default=MAN_ROOT)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    pages = read_pages(args.root, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    temp = args.out / "pages.jsonl.tmp"
    with temp.open("w", encoding="utf-8") as file:
        for page in pages:
            file.write(json.dumps(asdict(page), ensure_ascii=False) + "\n")
    temp.replace(args.out / "pages.jsonl")
    held = sum(held_out(p.name) for p in pages)
    print(f"{len(pages)} pages ({held} held out), {sum(len(p.text) for p in pages):,} characters: "
          f"{args.out / 'pages.jsonl'}")


if __name__ == "__main__":
    main()
