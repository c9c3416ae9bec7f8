"""The text of a run's committed chunks, for the indexes that search it (the lexical index, the embedder's).

A run stores each chunk's token ids with its vectors, so the text is the run's tokenizer's decoding of
them: nothing outside the run folder is read. Chunks committed by runs that predate stored tokens are
read back from the run's corpus instead (the document must still be there and unchanged).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docstream.corpus.chunk_id import ChunkId, ChunkIdColumns
from docstream.store.reader import read_chunk_tokens, run_settings
from docstream.tasks.snippets import SNIPPET_CHARS, shorten
from docstream.tokenizer import Tokenizer, load_tokenizer

__all__ = ["CommittedTexts", "read_chunk_texts", "run_tokenizer"]


@dataclass(frozen=True)
class CommittedTexts:
    """The live chunks of the commits with ``after_seq < seq <= last_seq``, in commit order: ``rows`` their
    ids, ``texts[i]`` row i's text, ``tokens[i]`` its token ids in the run's tokenizer (int32; None for a
    chunk of an old run, whose text came from the corpus). ``retracted``: documents those commits
    retracted (rows of theirs committed before ``after_seq`` no longer count)."""

    rows: ChunkIdColumns
    texts: list[str]
    tokens: list[np.ndarray | None]
    after_seq: int
    last_seq: int
    retracted: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.texts)


def run_tokenizer(out: str | Path) -> Tokenizer:
    """The tokenizer of the run at ``out`` (the file its settings name; it must still exist)."""
    path = Path(run_settings(out).tokenizer)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} used by the run at {str(out)!r} does not exist here; "
                                f"the chunks' texts are decoded with it, so put it back at that path")
    return load_tokenizer(path)


def read_chunk_texts(out: str | Path, after_seq: int = 0, upto_seq: int | None = None,
                     tokenizer: Tokenizer | None = None) -> CommittedTexts:
    """The text of every chunk committed with ``after_seq < seq <= upto_seq`` (exactly once: reading again
    with ``after_seq=last_seq`` gives only the chunks committed since). ``tokenizer`` defaults to the run's.

    A chunk is decoded as a whole, so a character whose bytes straddle two chunks shows as U+FFFD in both.
    """
    committed = read_chunk_tokens(out, after_seq, upto_seq)
    rows = committed.rows
    tokenizer = tokenizer or (run_tokenizer(out) if len(rows) else None)
    texts: list[str | None] = [None if t is None else tokenizer.decode(t.tolist()) for t in rows.tokens]
    missing = [i for i, text in enumerate(texts) if text is None]
    if missing:
        _read_from_corpus(out, tokenizer, rows, missing, texts)
    ids = ChunkIdColumns(*rows.ids())
    return CommittedTexts(ids, texts, rows.tokens, after_seq, committed.last_seq, committed.retracted)


def _read_from_corpus(out: str | Path, tokenizer: Tokenizer, rows: ChunkIdColumns, missing: list[int],
                      texts: list[str | None]) -> None:
    """Fill ``texts[i]`` for the rows in ``missing`` from the run's corpus (chunks of runs made before token ids
    were stored)."""
    chunks = [rows.row(i) for i in missing]
    found = read_snippets(corpus_reader(Path(out))(), tokenizer, chunks, limit=None)
    lost = [c for c in chunks if c not in found]
    if lost:
        raise FileNotFoundError(f"{len(lost)} chunks of the run at {str(out)!r} were committed before runs stored "
                                f"their tokens, and their documents can no longer be read from the run's corpus "
                                f"(first: {_describe(lost[0])}); put the corpus back, or make the run again")
    for i, chunk in zip(missing, chunks):
        texts[i] = found[chunk]


def _describe(chunk: ChunkId) -> str:
    return f"document {chunk.doc_id!r} chunk {chunk.chunk_index}"


# ---------------------------------------------------------------------------------------------
# Texts read back from the run's corpus (runs before stored tokens; snippets without a lexical index)

def corpus_reader(out: Path) -> Callable[[], Iterable]:
    """A function giving a fresh iterator over the run's corpus (the resolved input path of its identity)."""
    from docstream.corpus import iter_corpus
    from docstream.store.reader import read_run_config, run_settings

    settings = run_settings(out)
    path = read_run_config(out)["identity"].get("input", str(settings.input))
    return lambda: iter_corpus(path, settings.input_format, settings.id_field, settings.text_field)


def read_snippets(corpus: Iterable, tokenizer: Tokenizer, chunks: list[ChunkId],
                  limit: int | None = SNIPPET_CHARS) -> dict[ChunkId, str]:
    """The text of each chunk (whitespace collapsed and cut to ``limit`` characters; whole when ``limit`` is
    None), reading the corpus only
    until every wanted document was seen. Chunks whose document is missing or unreadable are left out."""
    from docstream.corpus import Document

    wanted: dict[str, list[ChunkId]] = {}
    for chunk in chunks:
        wanted.setdefault(chunk.doc_id, []).append(chunk)
    texts: dict[ChunkId, str] = {}
    try:
        for item in corpus:
            if isinstance(item, Document) and item.doc_id in wanted:
                for chunk in wanted.pop(item.doc_id):
                    text = _span_text(item, tokenizer, chunk)
                    if text is not None:
                        texts[chunk] = text if limit is None else shorten(text, limit)
            if not wanted:
                break
    except (OSError, ValueError):
        pass
    return texts


def _span_text(doc, tokenizer: Tokenizer, chunk: ChunkId) -> str | None:
    """The text of ``chunk`` in ``doc``, or None when the document no longer reaches it."""
    from docstream.corpus.chunker import text_of_span

    try:
        return text_of_span(doc, tokenizer, chunk.token_start, chunk.token_end)
    except (OSError, ValueError):  # the file vanished or shrank since the run
        return None
