"""Build known-item retrieval collections in BEIR layout from text already on this machine.

    python bench/beir_collections.py OUTDIR [--max-docs 300] [--doc-chars 3000] [--seed 0]

writes ``OUTDIR/<name>/corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id", "text"}),
``qrels/test.tsv`` (``query-id corpus-id score``) and ``collection.json`` (where the texts came from and
their licences) for four collections, each query having exactly one relevant document:

* ``readmes``: the long description (README) of each installed Python distribution; the query is the
  distribution's one-line ``Summary``, removed from the document wherever it occurs in it.
* ``pydoc``: the ``pydoc`` plain-text page of each importable standard-library module; the query is the
  module docstring's first line (its synopsis), removed from the page.
* ``debian``: Debian's ``/usr/share/doc/*/copyright`` files and ``/usr/share/common-licenses/*``; the
  query is one prose paragraph held out of the document (removed from it), chosen among paragraphs that
  share almost no word 5-grams with any other document, so that a licence notice copied into many
  files never becomes an ambiguous query.
* ``manpages``: the English manual pages that ``pipelines/man_pages.py`` holds out of the built-in
  embedder's training text (1 in 20, by a hash of the page's name), rendered by groff; the query is what
  the NAME line says the page documents (``ls - list directory contents`` gives "list directory
  contents"), and the document is the page's name(s) and every other section.

and, apart from them, one development collection for choosing settings (never to report):

* ``docstrings-dev``: the docstrings of the packages held out of the built-in embedder's training text
  (``runs/embedder-corpus/heldout``, from ``pipelines/embedder_corpus.py``), one document per module;
  the query is one docstring's summary line, removed from the document.

``readmes`` leaves out the distributions whose docstrings the built-in embedder was trained on
(``--unseen-by``), so every collection reported is unseen by it.

Documents are cut at paragraph boundaries to ``--doc-chars`` characters and identical texts are kept
once. Everything is deterministic for a given machine: inputs are sorted, sampling uses ``--seed``. The
texts stay under their authors' licences; they are read at run time and nothing is redistributed.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import random
import re
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

_WORDS = re.compile(r"[a-z0-9]+")
_LETTERS = re.compile(r"[A-Za-z ]")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# a Debian machine-readable copyright stanza ("Files: *", "License: GPL-2+") is a record, not prose
_DEP5_FIELD = re.compile(r"(?m)^(Files|Copyright|License|Comments?|Source|Format|Upstream-[\w-]+|Disclaimer)\s*:")
# distribution folders beside the running interpreter's own path, so that the system's packages count too
_SYSTEM_SITES = ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3.11/dist-packages")
# standard-library modules that are not documentation (tests, GUIs, demos, modules with side effects)
_SKIP_MODULES = re.compile(r"^(_|test|idlelib|tkinter|turtle|turtledemo|antigravity|this$|lib2to3|ensurepip|"
                           r"pydoc_data|__)")


@dataclass
class Doc:
    doc_id: str
    title: str
    text: str


@dataclass
class Collection:
    name: str
    source: str
    licence: str
    docs: list[Doc] = field(default_factory=list)
    #: query id -> (query text, relevant doc id)
    queries: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: source name -> its licence, where each source has its own
    licences: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Text helpers


def paragraphs_of(text: str) -> list[str]:
    """Blank-line separated paragraphs (a Debian control-file " ." line counts as blank), stripped, each
    line's indentation removed, empty ones dropped."""
    text = re.sub(r"(?m)^[ \t]+\.[ \t]*$", "", text.replace("\r\n", "\n"))
    paragraphs = (re.sub(r"(?m)^[ \t]+", "", p).strip() for p in re.split(r"\n\s*\n", text))
    return [p for p in paragraphs if p]


def cut(paragraphs: list[str], limit: int) -> list[str]:
    """The leading paragraphs that fit in ``limit`` characters (at least the first one, cut to ``limit``)."""
    kept, size = [], 0
    for p in paragraphs:
        if kept and size + len(p) + 2 > limit:
            break
        kept.append(p[:limit])
        size += len(p) + 2
    return kept


def is_prose(paragraph: str, min_words: int = 12, max_chars: int = 600) -> bool:
    """Whether a paragraph reads as running English text of query size (not code, lists or addresses)."""
    if len(paragraph) > max_chars or len(paragraph.split()) < min_words or _DEP5_FIELD.search(paragraph):
        return False
    return len(_LETTERS.findall(paragraph)) >= 0.85 * len(paragraph)


def remove_phrase(text: str, phrase: str) -> str:
    """``text`` without any case-insensitive occurrence of ``phrase`` (with or without its final period)."""
    core = phrase.strip().rstrip(".").strip()
    pattern = r"\s+".join(re.escape(w) for w in core.split()) + r"\.?"
    return re.sub(pattern, "", text, flags=re.IGNORECASE)


def shingles(text: str, n: int = 5) -> set[int]:
    words = _WORDS.findall(text.lower())
    return {hash(tuple(words[i:i + n])) for i in range(max(len(words) - n + 1, 1))}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def dedupe(docs: list[Doc]) -> list[Doc]:
    """Documents with distinct ids and distinct texts (whitespace-normalized); the first of each kept."""
    seen_text, seen_id, kept = set(), set(), []
    for doc in docs:
        key = hashlib.sha1(" ".join(doc.text.split()).encode()).hexdigest()
        if key not in seen_text and doc.doc_id not in seen_id:
            seen_text.add(key)
            seen_id.add(doc.doc_id)
            kept.append(doc)
    return kept


# ---------------------------------------------------------------------------------------------
# readmes


def trained_distributions(training_text: Path | None) -> set[str]:
    """Slugs of the distributions whose packages' docstrings are in the embedder's training text (its folder
    names are import names): their READMEs are left out of the readmes collection, which must be unseen."""
    if training_text is None or not training_text.is_dir():
        return set()
    imported = {p.name for p in training_text.iterdir() if p.is_dir()}
    return {slug(dist) for name, dists in importlib.metadata.packages_distributions().items() if name in imported
            for dist in dists}


def readmes(max_docs: int, doc_chars: int, exclude: set[str] = frozenset()) -> Collection:
    """Installed distributions' READMEs (those in ``exclude`` left out); query = the distribution's Summary line."""
    found: dict[str, tuple[str, str, str]] = {}
    licences: dict[str, str] = {}
    paths = sorted({*sys.path, *(p for p in _SYSTEM_SITES if os.path.isdir(p))})
    for dist in importlib.metadata.distributions(path=paths):
        meta = dist.metadata
        name = (meta.get("Name") or "").strip()
        text = (meta.get_payload() or meta.get("Description") or "").strip()
        summary = " ".join((meta.get("Summary") or "").split())
        if (name and slug(name) not in found and slug(name) not in exclude and len(summary.split()) >= 4
                and len(text) >= 500):
            found[slug(name)] = (name, summary, text)
            licences[name] = meta.get("License-Expression") or _short(meta.get("License")) or _classifiers(meta)
    chosen = sorted(found.values(), key=lambda f: (-len(f[2]), f[0].lower()))[:max_docs]
    collection = Collection("readmes", "long descriptions (README) and Summary lines of the installed Python "
                            "distributions, read with importlib.metadata",
                            "each distribution's own licence (its License / License-Expression metadata)")
    docs, summaries = [], {}
    for name, summary, text in sorted(chosen, key=lambda f: f[0].lower()):
        body = "\n\n".join(cut(paragraphs_of(remove_phrase(text, summary)), doc_chars))
        docs.append(Doc(f"readme-{slug(name)}", name, body))
        summaries[f"readme-{slug(name)}"] = summary
    collection.docs = dedupe(docs)
    collection.licences = {d.title: licences[d.title] or "unknown" for d in collection.docs}
    # two distributions with the same summary (a family of plugins) would make an ambiguous known item
    counts: dict[str, int] = {}
    for summary in summaries.values():
        counts[summary.lower()] = counts.get(summary.lower(), 0) + 1
    collection.queries = {f"q-{d.doc_id}": (summaries[d.doc_id], d.doc_id) for d in collection.docs
                          if counts[summaries[d.doc_id].lower()] == 1}
    return collection


def _short(text: str | None) -> str:
    """The first line of a License field (some hold the whole licence text)."""
    return text.strip().splitlines()[0][:60] if text and text.strip() else ""


def _classifiers(meta) -> str:
    return ", ".join(c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::"))


# ---------------------------------------------------------------------------------------------
# pydoc


def stdlib_modules() -> list[str]:
    return sorted(m for m in sys.stdlib_module_names if not _SKIP_MODULES.match(m))


def pydoc_collection(max_docs: int, doc_chars: int, rng: random.Random) -> Collection:
    """pydoc pages of standard-library modules; query = the module's synopsis (docstring's first line)."""
    import pydoc

    collection = Collection("pydoc", f"pydoc plain-text pages of Python {sys.version.split()[0]}'s standard "
                            "library modules", "Python Software Foundation License (PSF-2.0)")
    pages = []
    for name in stdlib_modules():
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                page = pydoc.render_doc(module, renderer=pydoc.plaintext)
        except Exception:  # noqa: BLE001, S112 -- a module that does not import here is not in the collection
            continue
        synopsis = " ".join(pydoc.splitdoc(inspect.getdoc(module) or "")[0].split())
        pages.append((name, synopsis, page))
    if len(pages) > max_docs:
        pages = sorted(rng.sample(pages, max_docs))
    docs, synopses = [], {}
    for name, synopsis, page in pages:
        page = _ADDRESS.sub("", page)  # object reprs carry memory addresses, which differ per process
        # the reference-manual section is the same boilerplate on every page, and FILE is an install path
        page = re.sub(r"(?s)\nMODULE REFERENCE\n.*?\n(?=[A-Z][A-Z ]+\n)", "\n", page)
        page = re.sub(r"(?s)\nFILE\n.*$", "\n", page)
        if len(synopsis.split()) >= 3:
            page = remove_phrase(page, synopsis)
            synopses[f"pydoc-{name}"] = synopsis
        docs.append(Doc(f"pydoc-{name}", name, "\n\n".join(cut(paragraphs_of(page), doc_chars))))
    collection.docs = dedupe(docs)
    collection.queries = {f"q-{d.doc_id}": (synopses[d.doc_id], d.doc_id) for d in collection.docs
                          if d.doc_id in synopses}
    return collection


# ---------------------------------------------------------------------------------------------
# debian


def debian(max_docs: int, doc_chars: int, rng: random.Random, max_overlap: float = 0.1) -> Collection:
    """Debian copyright files and common licences; query = one unique prose paragraph held out."""
    collection = Collection("debian", "Debian's /usr/share/doc/*/copyright files and /usr/share/common-licenses/*",
                            "each file's own terms; the licence texts themselves may be copied verbatim")
    raw = []
    licences = Path("/usr/share/common-licenses")
    for path in sorted(licences.iterdir()) if licences.is_dir() else []:
        raw.append(Doc(f"license-{slug(path.name)}", f"{path.name} licence",
                       path.resolve().read_text(errors="replace")))
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        if path.is_file():
            raw.append(Doc(f"copyright-{slug(path.parent.name)}", f"{path.parent.name} copyright",
                           path.read_text(errors="replace")))
    docs = [Doc(d.doc_id, d.title, "\n\n".join(cut(paragraphs_of(d.text), doc_chars))) for d in dedupe(raw)]
    docs = dedupe(docs)  # texts that only differed after the cut
    if len(docs) > max_docs:
        docs = sorted(rng.sample(docs, max_docs), key=lambda d: d.doc_id)
    # a paragraph is a usable known item when (almost) none of its 5-grams occurs in another document
    doc_shingles = [shingles(d.text) for d in docs]
    seen_in: dict[int, int] = {}
    for grams in doc_shingles:
        for g in grams:
            seen_in[g] = seen_in.get(g, 0) + 1
    for doc in docs:
        paragraphs = paragraphs_of(doc.text)
        candidates = []
        for i, p in enumerate(paragraphs):
            grams = shingles(p)
            shared = sum(seen_in.get(g, 0) > 1 for g in grams) / len(grams)
            if i > 0 and is_prose(p) and shared <= max_overlap:
                candidates.append(i)
        removed = rng.choice(candidates) if candidates else None
        if removed is not None and len(paragraphs) > 1:
            collection.queries[f"q-{doc.doc_id}"] = (" ".join(paragraphs[removed].split()), doc.doc_id)
            doc.text = "\n\n".join(p for i, p in enumerate(paragraphs) if i != removed)
    collection.docs = docs
    return collection


# ---------------------------------------------------------------------------------------------
# Output


def write_beir(collection: Collection, directory: Path) -> None:
    """The collection as BEIR files in ``directory`` (replaced if it exists)."""
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n"
                     for d in sorted(collection.docs, key=lambda d: d.doc_id))
    with open(directory / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": q, "text": text}) + "\n" for q, (text, _) in sorted(collection.queries.items()))
    with open(directory / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{doc_id}\t1\n" for q, (_, doc_id) in sorted(collection.queries.items()))
    info = {"name": collection.name, "source": collection.source, "licence": collection.licence,
            "documents": len(collection.docs), "queries": len(collection.queries),
            "characters": sum(len(d.text) for d in collection.docs), "licences": collection.licences}
    (directory / "collection.json").write_text(json.dumps(info, indent=1) + "\n")


BUILDERS = ("readmes", "pydoc", "debian", "manpages", "docstrings-dev")


def build(name: str, args: argparse.Namespace) -> Collection:
    rng = random.Random(f"{args.seed}-{name}")
    if name == "readmes":
        return readmes(args.max_docs, args.doc_chars, trained_distributions(args.unseen_by))
    if name == "pydoc":
        return pydoc_collection(args.max_docs, args.doc_chars, rng)
    if name == "docstrings-dev":
        return docstrings_dev(args.unseen_by.parent / "heldout", args.max_docs, args.doc_chars, rng)
    if name == "manpages":
        return manpages(args.max_docs, args.doc_chars, rng)
    return debian(args.max_docs, args.doc_chars, rng)


def manpages(max_docs: int, doc_chars: int, rng: random.Random) -> Collection:
    """The held-out manual pages; query = what the page's NAME line says it documents."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipelines"))
    import man_pages

    collection = Collection("manpages", "English manual pages of /usr/share/man held out of the built-in embedder's "
                            "training text (pipelines/man_pages.py), rendered by groff",
                            "each page's own terms (its package's licence)")
    pages = []
    for path in man_pages.page_files():
        name = path.name.removesuffix(".gz")
        if man_pages.held_out(name) and (rendered := man_pages.render(path)) is not None:
            page = man_pages.parse(name, rendered)
            if page is not None:
                pages.append(page)
    # two pages documenting the same thing ("manual page for llvm-ar 14") would make an ambiguous query
    counts: dict[str, int] = {}
    for page in pages:
        counts[page.summary.lower()] = counts.get(page.summary.lower(), 0) + 1
    docs, queries = [], {}
    for page in pages:
        if counts[page.summary.lower()] > 1:
            continue
        doc_id = f"man-{slug(page.name)}"
        docs.append(Doc(doc_id, page.names, "\n\n".join(cut(paragraphs_of(remove_phrase(page.text, page.summary)),
                                                             doc_chars))))
        queries[f"q-{doc_id}"] = (page.summary, doc_id)
    collection.docs = dedupe(docs)
    if len(collection.docs) > max_docs:
        collection.docs = sorted(rng.sample(collection.docs, max_docs), key=lambda d: d.doc_id)
    kept = {d.doc_id for d in collection.docs}
    collection.queries = {q: v for q, v in queries.items() if v[1] in kept}
    return collection


def docstrings_dev(heldout: Path, max_docs: int, doc_chars: int, rng: random.Random) -> Collection:
    """The embedder's held-out docstrings, one document per module; query = one docstring's summary line."""
    collection = Collection("docstrings-dev", f"docstrings of the packages in {heldout} (held out of the built-in "
                            "embedder's training text; for choosing settings only)",
                            "each package's own licence")
    # heldout/man/ holds manual pages (the manpages collection), not docstrings
    paths = sorted(p for p in heldout.rglob("*.txt") if p.relative_to(heldout).parts[0] != "man") \
        if heldout.is_dir() else []
    if not paths:
        raise SystemExit(f"{heldout} has no held-out docstrings: run pipelines/embedder_corpus.py first")
    docs, queries = [], {}
    for path in paths[:max_docs]:
        blocks = [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
        summaries = [b.splitlines()[0].strip() for b in blocks if len(b.splitlines()[0].split()) >= 5]
        if not summaries:
            continue
        summary = rng.choice(summaries)
        doc_id = f"module-{path.parent.name}-{path.stem}"
        body = "\n\n".join(cut(paragraphs_of(remove_phrase(path.read_text(encoding="utf-8"), summary)), doc_chars))
        docs.append(Doc(doc_id, path.stem, body))
        queries[f"q-{doc_id}"] = (summary, doc_id)
    collection.docs = dedupe(docs)
    kept = {d.doc_id for d in collection.docs}
    collection.queries = {q: v for q, v in queries.items() if v[1] in kept}
    return collection


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path, help="folder to write one BEIR collection folder per collection into")
    p.add_argument("--only", choices=BUILDERS, action="append", help="build only these collections")
    p.add_argument("--max-docs", type=int, default=300, help="documents per collection at most (default 300)")
    p.add_argument("--doc-chars", type=int, default=3000, help="longest document in characters (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unseen-by", type=Path, default=Path("runs/embedder-corpus/text"),
                   help="the built-in embedder's training text (pipelines/embedder_corpus.py): READMEs of the "
                        "distributions whose docstrings it holds are left out of readmes (default: %(default)s)")
    args = p.parse_args(argv)
    if args.max_docs < 2 or args.doc_chars < 200:
        p.error("--max-docs must be at least 2 and --doc-chars at least 200")
    for name in args.only or BUILDERS:
        collection = build(name, args)
        write_beir(collection, args.outdir / name)
        chars = sum(len(d.text) for d in collection.docs)
        print(f"{name}: {len(collection.docs)} documents ({chars:,} characters), {len(collection.queries)} queries "
              f"-> {args.outdir / name}\n  texts: {collection.source}\n  licence: {collection.licence}")
        if collection.licences:
            print("  sources (licence): " + "; ".join(f"{k} ({v})" for k, v in collection.licences.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
