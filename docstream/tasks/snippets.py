"""Snippets: a chunk's text on one line, cut to the length a search hit shows."""
from __future__ import annotations

import re

__all__ = ["SNIPPET_CHARS", "shorten"]

#: characters of text a search hit shows
SNIPPET_CHARS = 200
_SPACES = re.compile(r"\s+")


def shorten(text: str, limit: int = SNIPPET_CHARS) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to ``limit`` characters with "…"."""
    flat = _SPACES.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"
