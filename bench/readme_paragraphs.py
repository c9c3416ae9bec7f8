"""Known-item queries held out of installed packages' READMEs: the corpus of ``bench/lexical_choice.py``.

The long descriptions (README text in each distribution's ``METADATA``) of the Python packages installed
in the running interpreter's environment, read with ``importlib.metadata``, are cut at paragraph
boundaries into documents; prose paragraphs are held out of them as queries. (This was the corpus of
``bench/retrieval_eval.py`` before it read BEIR collections; ``bench/beir_collections.py`` builds those.)
Each text stays under its own project's licence; nothing is redistributed.
"""
from __future__ import annotations

import importlib.metadata
import random
import re
from dataclasses import dataclass

_LETTERS = re.compile(r"[A-Za-z ]")
_NOT_PROSE = ("```", "    ", "\t", ">>>", "|", "#", "<", "[", "!", "..", "=", "-", "*", "+", "$")

@dataclass
class Source:
    """The README of one installed distribution."""

    name: str
    licence: str
    text: str


@dataclass
class Doc:
    doc_id: str
    source: str
    paragraphs: list[str]


@dataclass
class Query:
    text: str
    doc_id: str


def installed_readmes(min_chars: int) -> list[Source]:
    """The long descriptions of the installed distributions, one per name, longest first."""
    seen: dict[str, Source] = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = (meta.get("Name") or "").strip()
        text = (meta.get_payload() or meta.get("Description") or "").strip()
        if not name or len(text) < min_chars or name.lower() in seen:
            continue
        licence = meta.get("License-Expression") or _first_line(meta.get("License")) or _classifier_licence(meta)
        seen[name.lower()] = Source(name, licence or "unknown", text)
    return sorted(seen.values(), key=lambda s: (-len(s.text), s.name))


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0][:60] if text and text.strip() else ""


def _classifier_licence(meta) -> str:
    found = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return ", ".join(found)


def paragraphs_of(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]


def is_prose(paragraph: str, min_chars: int) -> bool:
    """Whether a paragraph looks like running English text (not code, tables, lists or markup)."""
    if len(paragraph) < min_chars or paragraph.startswith(_NOT_PROSE):
        return False
    letters = len(_LETTERS.findall(paragraph))
    return letters >= 0.85 * len(paragraph) and len(paragraph.split()) >= 20


def split_documents(sources: list[Source], doc_chars: int, max_parts: int) -> list[Doc]:
    """Each README cut at paragraph boundaries into documents of at most ``doc_chars`` characters."""
    docs = []
    for source in sources:
        parts: list[list[str]] = [[]]
        for paragraph in paragraphs_of(source.text):
            if parts[-1] and sum(len(p) + 2 for p in parts[-1]) + len(paragraph) > doc_chars:
                parts.append([])
            parts[-1].append(paragraph[:doc_chars])
        for i, part in enumerate(parts[:max_parts]):
            docs.append(Doc(f"{_slug(source.name)}-{i + 1}.txt", source.name, part))
    return docs


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def hold_out(docs: list[Doc], per_doc: int, min_chars: int, rng: random.Random) -> tuple[list[Doc], list[Query]]:
    """Remove up to ``per_doc`` prose paragraphs (never the first) from each document; they become queries.
    Documents left with less than half their text are not used for queries."""
    queries = []
    for doc in docs:
        candidates = [i for i, p in enumerate(doc.paragraphs) if i > 0 and is_prose(p, min_chars)]
        chosen = sorted(rng.sample(candidates, min(per_doc, len(candidates))))
        removed = sum(len(doc.paragraphs[i]) for i in chosen)
        if not chosen or removed > 0.5 * sum(len(p) for p in doc.paragraphs):
            continue
        queries.extend(Query(doc.paragraphs[i], doc.doc_id) for i in chosen)
        doc.paragraphs = [p for i, p in enumerate(doc.paragraphs) if i not in chosen]
    return docs, queries
