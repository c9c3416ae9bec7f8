"""The lexical (BM25) index of a run's chunk texts, in tantivy, updated incrementally and exactly once.

Layout of ``OUT/index/lexical/``::

    meta.json          the commit point: the run's last commit ``seq`` included, chunk count, generation,
                       run identity, tokenizer, and the sha256 and size of every file of the generation
    gen-000003/        a tantivy index: one document per chunk (row, doc_id, chunk_index, token range, text)
      documents/       a second tantivy index: one document per source document, the text of all its chunks
    .lock              flock: one updater at a time, readers share it

An update makes the next generation in ``gen-000004.tmp-PID/``: it hard-links every file of the current
generation there (tantivy never rewrites a segment file, and replaces its own meta.json by rename, so the
old generation's files stay as they were), adds the chunks of the commits after ``seq``, commits, fsyncs,
renames the directory to ``gen-000004/``, rewrites ``meta.json`` atomically, and only then deletes older
generations and temp directories. A reader trusts only the generation ``meta.json`` names, so a crash at any
moment leaves the old consistent generation or the new one, and the next update adds each committed chunk
exactly once. Files that differ from their checksums raise :class:`IndexDamagedError`; the index is derived
data, so rebuilding it (``rebuild=True``) is always the fix.

A chunk's score is its own BM25 score plus :data:`DOCUMENT_WEIGHT` times its document's BM25 score in the
document index (passage retrieval with document evidence, as in Callan's "Passage-level evidence in document
retrieval", SIGIR 1994): a query's words spread over several chunks of one document, such as a title in the
first chunk and the matching description in the third, still find that document. An update re-indexes each
document that gained chunks (deleting its old entry; its text is read back from the chunk index), inside the
same new generation. As in Lucene, a replaced entry still counts in BM25's statistics until tantivy merges
its segment away; a rebuild starts them afresh.

Text is split on non-alphanumerics, lower-cased, English stop words dropped and the rest stemmed
(Snowball); a query is the OR of its terms, each weighted by how often it occurs in the query, so any
text is a valid query (``bench/lexical_choice.py`` measured this against bm25s and other analyzers).
Loading and searching import neither pyarrow nor torch: a command-line query stays fast.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tantivy

from docstream.files import (
    DiskFullError,
    atomic_write_bytes,
    disk_full,
    locked,
    no_space,
)
from docstream.tasks.lexical_files import (
    generation_problems,
    last_generation,
    link_files,
    publish,
    remove_unnamed,
    seal,
)

__all__ = ["DiskFullError", "LexicalHit", "LexicalIndex", "LexicalMeta", "LexicalUpdate", "check_lexical",
           "lexical_dir", "load_lexical", "read_lexical_meta", "update_lexical"]

META_NAME = "meta.json"
#: 2: with the document index (``documents/``); an index of format 1 is rebuilt by the next update
META_FORMAT = 2
#: the first format with a document index
DOCUMENTS_FORMAT = 2
#: the subfolder of a generation that holds the document index
DOCUMENTS = "documents"
#: a chunk's score is its BM25 score plus this times its document's (chosen with the hybrid search settings over
#: five collections: bench/RESULTS.md, "Document evidence" and "Fusion")
DOCUMENT_WEIGHT = 2.0
#: chunks scored for a query before the best ``k`` are kept, and documents looked up for their scores
CANDIDATES = 100
#: the analyzer of the text field, registered under this name on every open (tantivy does not store it)
TOKENIZER = "docstream_en_stem_stop"
WRITER_HEAP = 64_000_000
#: documents added between progress updates
PROGRESS_EVERY = 4096


def english_analyzer() -> tantivy.TextAnalyzer:
    """Split on non-alphanumerics, drop tokens over 40 bytes, lower-case, drop English stop words, stem."""
    filters = tantivy.Filter
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    for step in (filters.remove_long(40), filters.lowercase(), filters.stopword("english"),
                 filters.stemmer("english")):
        builder = builder.filter(step)
    return builder.build()


def lexical_schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("row", stored=True, indexed=True, fast=True)
    builder.add_text_field("doc_id", stored=True, tokenizer_name="raw")
    builder.add_unsigned_field("chunk_index", stored=True)
    builder.add_unsigned_field("token_start", stored=True)
    builder.add_unsigned_field("token_end", stored=True)
    builder.add_text_field("text", stored=True, tokenizer_name=TOKENIZER)
    return builder.build()


def documents_schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("doc_id", stored=True, tokenizer_name="raw")
    builder.add_text_field("text", stored=False, tokenizer_name=TOKENIZER)
    return builder.build()


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class LexicalMeta:
    """What ``meta.json`` records about the current generation: ``files`` maps each file name in it to
    ``{"sha256": ..., "size": ...}``."""

    seq: int
    count: int
    generation: int
    run_identity: str
    tokenizer: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = META_FORMAT
    #: source documents in the document index (format 2)
    documents: int = 0

    @property
    def directory(self) -> str:
        return f"gen-{self.generation:06d}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> LexicalMeta:
        try:
            meta = cls(**json.loads(data))
            if not isinstance(meta.files, dict) or not all(isinstance(v, dict) and "sha256" in v
                                                           for v in meta.files.values()):
                raise TypeError("its file list is malformed")
        except (ValueError, TypeError) as err:
            raise _damaged(path, f"is not a docstream lexical index description ({err})") from err
        if meta.format > META_FORMAT:
            raise ValueError(f"lexical index meta {path} has format {meta.format}, newer than this docstream's "
                             f"{META_FORMAT}; upgrade docstream, or rebuild the index with this version")
        return meta


@dataclass(frozen=True)
class LexicalHit:
    """One chunk found by a lexical query: ``row`` is its position in the index (the order it was added)."""

    row: int
    score: float
    doc_id: str
    chunk_index: int
    token_start: int
    token_end: int
    text: str


@dataclass(frozen=True)
class LexicalUpdate:
    """What :func:`update_lexical` did: ``added`` chunks (0 when the index was up to date)."""

    meta: LexicalMeta
    added: int
    path: Path


class LexicalIndex:
    """A generation opened for searching (read-only). ``documents`` is its document index (None in an index
    of format 1: chunks are then scored alone)."""

    def __init__(self, meta: LexicalMeta, index: tantivy.Index, documents: tantivy.Index | None = None):
        self.meta, self.index, self.documents = meta, index, documents
        self.schema = index.schema
        self.analyzer = english_analyzer()
        self.searcher = index.searcher()
        self.document_searcher = documents.searcher() if documents is not None else None
        #: a chunk's score is its BM25 plus this times its document's
        self.document_weight = DOCUMENT_WEIGHT

    def __len__(self) -> int:
        return self.meta.count

    def terms(self, query: str) -> Counter:
        """The index terms of ``query`` and how often each occurs (what :meth:`search` looks for)."""
        return Counter(self.analyzer.analyze(query))

    def search(self, query: str, k: int) -> list[LexicalHit]:
        """Up to ``k`` chunks matching any term of ``query``, best score first: the chunk's BM25 score plus
        :attr:`document_weight` (:data:`DOCUMENT_WEIGHT`) times its document's (among the best
        :data:`CANDIDATES` chunks and documents). Any text is a query (no query syntax); one without index
        terms (empty, only stop words or punctuation) finds nothing."""
        if not isinstance(query, str):
            raise TypeError(f"a lexical query is a string, got {type(query).__name__}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        terms = self.terms(query)
        if not terms or not self.meta.count:
            return []
        found = self.searcher.search(_terms_query(self.schema, terms), count=False,
                                     limit=min(k if self.documents is None else max(k, CANDIDATES), self.meta.count))
        hits = [self._hit(score, address) for score, address in found.hits]
        if self.document_searcher is None or not hits:
            return hits[:k]
        documents = self.document_scores(terms)
        scored = [replace(hit, score=hit.score + self.document_weight * documents.get(hit.doc_id, 0.0))
                  for hit in hits]
        scored.sort(key=lambda hit: (-hit.score, hit.row))
        return scored[:k]

    def document_scores(self, terms: Counter) -> dict[str, float]:
        """The BM25 scores of the :data:`CANDIDATES` documents that best match ``terms`` (query terms and
        their counts, :meth:`terms`), by document id."""
        if self.document_searcher is None or not self.meta.documents:
            return {}
        found = self.document_searcher.search(_terms_query(self.documents.schema, terms), count=False,
                                              limit=min(CANDIDATES, self.meta.documents))
        return {self.document_searcher.doc(address).get_first("doc_id"): float(score)
                for score, address in found.hits}

    def search_many(self, queries: Iterable[str], k: int) -> list[list[LexicalHit]]:
        """:meth:`search` of each query, in order."""
        return [self.search(query, k) for query in queries]

    def chunks(self) -> list[LexicalHit]:
        """Every chunk of the index in row order (score 0), e.g. to compare two indexes."""
        if not self.meta.count:
            return []
        hits = self.searcher.search(tantivy.Query.all_query(), limit=self.meta.count, count=False,
                                    order_by_field="row", order=tantivy.Order.Asc).hits
        return [self._hit(0.0, address) for _, address in hits]

    def document_chunks(self, doc_id: str) -> list[LexicalHit]:
        """The chunks of document ``doc_id`` in the index (score 0), in row order: how search finds the text
        of a chunk the dense retriever ranked."""
        if not self.meta.count:
            return []
        query = tantivy.Query.term_query(self.schema, "doc_id", doc_id)
        hits = self.searcher.search(query, limit=self.meta.count, count=False, order_by_field="row",
                                    order=tantivy.Order.Asc).hits
        return [self._hit(0.0, address) for _, address in hits]

    def _hit(self, score: float, address: tantivy.DocAddress) -> LexicalHit:
        doc = self.searcher.doc(address)
        return LexicalHit(int(doc.get_first("row")), float(score), doc.get_first("doc_id"),
                          int(doc.get_first("chunk_index")), int(doc.get_first("token_start")),
                          int(doc.get_first("token_end")), doc.get_first("text"))


def _terms_query(schema: tantivy.Schema, terms: Counter) -> tantivy.Query:
    """A boolean OR of term queries on the text field (never the query parser, which has a syntax user text
    can break), each term weighted by its count in the query as BM25 does."""
    Query, should = tantivy.Query, tantivy.Occur.Should
    return Query.boolean_query([(should, Query.boost_query(Query.term_query(schema, "text", term), float(n)))
                                for term, n in terms.items()])


# ---------------------------------------------------------------------------------------------
# Reading


def lexical_dir(out: str | Path) -> Path:
    """``OUT/index/lexical``."""
    return Path(out) / "index" / "lexical"


def rebuild_hint(directory: Path) -> str:
    """What fixes a damaged or stale lexical index in ``directory`` (``OUT/index/lexical``)."""
    out = directory.parents[1]
    return (f"the lexical index is derived data: rebuild it with `docstream index --run {out} --rebuild` "
            f"(update_lexical(out, rebuild=True)) or `docstream verify --run {out} --repair`")


def _damaged(path: Path, problem: str) -> Exception:
    """The :class:`~docstream.tasks.index_files.IndexDamagedError` for ``path``. Imported only when one is
    raised: its module imports pyarrow, which the query path must not load."""
    from docstream.tasks.index_files import IndexDamagedError

    directory = path if path.name == "lexical" else next(p for p in path.parents if p.name == "lexical")
    return IndexDamagedError(path, problem, rebuild_hint(directory))


def read_lexical_meta(out: str | Path) -> LexicalMeta | None:
    """The current lexical index description, or None when there is no lexical index yet."""
    path = lexical_dir(out) / META_NAME
    if not path.exists():
        return None
    return LexicalMeta.from_json(path.read_bytes(), path)


def _check_generation(directory: Path, meta: LexicalMeta) -> None:
    for path, problem in generation_problems(directory, meta):
        raise _damaged(path, problem)


def _open(generation: Path) -> tantivy.Index:
    index = tantivy.Index.open(str(generation))
    index.register_tokenizer(TOKENIZER, english_analyzer())
    return index


def _open_documents(generation: Path, meta: LexicalMeta) -> tantivy.Index | None:
    """The document index of ``generation`` (None for an index older than :data:`DOCUMENTS_FORMAT`)."""
    return _open(generation / DOCUMENTS) if meta.format >= DOCUMENTS_FORMAT else None


def load_lexical(out: str | Path) -> LexicalIndex:
    """The current lexical index of the run at ``out``, its files checked against ``meta.json`` first.

    Raises:
        FileNotFoundError: there is no lexical index yet.
        IndexDamagedError: a file of the generation is missing, differs from its checksum, or is unreadable.
    """
    directory = lexical_dir(out)
    if not (directory / META_NAME).exists():
        raise FileNotFoundError(f"there is no lexical index in {str(out)!r}; build it with "
                                f"`docstream index --run {out}` or update_lexical()")
    with locked(directory, exclusive=False):
        meta = read_lexical_meta(out)
        _check_generation(directory, meta)
        generation = directory / meta.directory
        try:
            loaded = LexicalIndex(meta, _open(generation), _open_documents(generation, meta))
        except (ValueError, OSError) as err:  # tantivy reports unreadable indexes as ValueError
            raise _damaged(generation, f"is not a readable tantivy index ({err})") from err
    if loaded.searcher.num_docs != meta.count:
        raise _damaged(generation, f"holds {loaded.searcher.num_docs} chunks, but meta.json says {meta.count}")
    if loaded.document_searcher is not None and loaded.document_searcher.num_docs != meta.documents:
        raise _damaged(generation / DOCUMENTS, f"holds {loaded.document_searcher.num_docs} documents, but meta.json "
                                               f"says {meta.documents}")
    return loaded


def check_lexical(out: str | Path, run_seq: int | None = None, identity: str | None = None
                  ) -> list[tuple[Path, str]]:
    """The problems of the run's lexical index as ``(path, problem)`` (none when there is no index):
    damaged files, and -- when ``run_seq`` / ``identity`` are given -- an index ahead of the run or of another
    run. The fix for each is :func:`rebuild_hint`."""
    directory = lexical_dir(out)
    meta_path = directory / META_NAME
    if not directory.is_dir():
        return []
    if not meta_path.exists():
        leftovers = sorted(p.name for p in directory.iterdir() if p.name != ".lock")
        return [(meta_path, f"is missing, so the files here ({', '.join(leftovers)}) are no usable index")
                ] if leftovers else []
    with locked(directory, exclusive=False):
        try:
            meta = LexicalMeta.from_json(meta_path.read_bytes(), meta_path)
        except ValueError as err:
            return [(meta_path, getattr(err, "problem", str(err)))]
        problems = generation_problems(directory, meta)
    if not problems:
        try:
            load_lexical(out)
        except ValueError as err:
            problems.append((Path(getattr(err, "path", directory)), getattr(err, "problem", str(err))))
    if identity is not None and meta.run_identity != identity:
        problems.append((meta_path, "was built from another run, or from this run with other settings"))
    if run_seq is not None and meta.seq > run_seq:
        problems.append((meta_path, (f"includes commit {meta.seq} but the run's newest commit is {run_seq} "
                                     f"(the run folder was rewritten)")))
    return problems


# ---------------------------------------------------------------------------------------------
# Updating


def update_lexical(out: str | Path, rebuild: bool = False, progress: bool = False) -> LexicalUpdate:
    """Bring the lexical index of the run at ``out`` up to the run's latest commit.

    Adds only the chunks of commits newer than the index's ``seq``, so each chunk is indexed exactly once
    however often this is called (and after a crash). ``rebuild=True`` indexes every committed chunk afresh.

    Raises:
        ValueError: the index was built from another run, or the run has no committed chunks yet.
        IndexDamagedError: a file of the current generation is missing or differs from its checksum
            (checked also when nothing is new), or the index is ahead of the run.
        DiskFullError: the disk filled up; the previous generation is intact and no temp directory is left.
        FileNotFoundError: ``out`` is not a run's output directory.
    """
    from docstream.store.reader import last_seq, run_identity  # these import pyarrow: only updates pay for it
    from docstream.tasks.chunk_text import read_chunk_texts

    identity = run_identity(out)
    directory = lexical_dir(out)
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory, exclusive=True):
        old = None if rebuild else read_lexical_meta(out)
        if old is not None and old.run_identity != identity:
            raise ValueError(f"the lexical index in {directory} was built from a run with other settings or "
                             f"another model; rebuild it (rebuild=True, --rebuild)")
        if old is not None and (old.tokenizer != TOKENIZER or old.format < META_FORMAT):
            # its text was analyzed another way (queries analyzed this way would miss), or it has no document
            # index: start over
            old = None
        if old is not None:
            _check_generation(directory, old)
        if old is not None and (newest := last_seq(out)) < old.seq:
            raise _damaged(directory / META_NAME, f"includes commit {old.seq} but the run's newest commit is "
                                                  f"{newest} (the run folder was rewritten)")
        new = read_chunk_texts(out, after_seq=old.seq if old else 0)
        if old is not None and new.retracted:
            # chunks already indexed belong to documents a later commit retracted: start over
            old, new = None, read_chunk_texts(out)
        if old is not None and new.last_seq == old.seq:
            return LexicalUpdate(old, 0, directory)
        if old is None and not len(new):
            raise ValueError(f"the run at {str(out)!r} has no committed chunks yet, so there is nothing to index; "
                             f"let `docstream run` commit some first")
        if not len(new):  # newer commits without chunks: only the seq moves on, the generation stays
            meta = replace(old, seq=new.last_seq)
            _write_meta(directory, meta)
            return LexicalUpdate(meta, 0, directory)
        return LexicalUpdate(_write_generation(directory, old, new, identity, progress), len(new), directory)


def _write_generation(directory: Path, old: LexicalMeta | None, new: Any, identity: str,
                      progress: bool) -> LexicalMeta:
    """Copy the old generation by hard links, add ``new``'s chunks, and commit it as the next generation."""
    number = max(old.generation if old else 0, last_generation(directory)) + 1
    final = directory / f"gen-{number:06d}"
    temp = directory / f"{final.name}.tmp-{os.getpid()}"
    first_row = old.count if old else 0
    try:
        temp.mkdir()
        if old is not None:
            link_files(directory / old.directory, temp, old.files)
        _add_chunks(temp, old is None, first_row, new, progress)
        earlier = LexicalIndex(old, _open(directory / old.directory)) if old is not None else None
        documents = _update_documents(temp, earlier, new)
        files = seal(temp, directory / old.directory if old else None, old.files if old else {})
        publish(temp, final)
        meta = LexicalMeta(new.last_seq, first_row + len(new), number, identity, TOKENIZER, files,
                           documents=documents)
        _write_meta(directory, meta)
    except BaseException as err:
        # remove what this update wrote (a full disk gets its space back); the old generation stays current
        shutil.rmtree(temp, ignore_errors=True)
        if final.exists() and _named_generation(directory) != final.name:
            shutil.rmtree(final, ignore_errors=True)
        if no_space(err) and not isinstance(err, DiskFullError):
            raise disk_full(final, err) from err
        raise
    remove_unnamed(directory, keep=final.name)
    return meta


def _add_chunks(generation: Path, create: bool, first_row: int, new: Any, progress: bool) -> None:
    """Add ``new``'s chunks to the tantivy index in ``generation`` (rows from ``first_row``) and commit them."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(new), desc="lexical index", unit="chunk")
    rows = new.rows
    try:
        if create:
            index = tantivy.Index(lexical_schema(), path=str(generation), reuse=False)
            index.register_tokenizer(TOKENIZER, english_analyzer())
        else:
            index = _open(generation)

        def add(writer: tantivy.IndexWriter) -> None:
            for i, text in enumerate(new.texts):
                doc = tantivy.Document()  # typed adds: Document(row=...) would make an i64 the u64 field refuses
                doc.add_unsigned("row", first_row + i)
                doc.add_text("doc_id", str(rows.doc_id[i]))
                doc.add_unsigned("chunk_index", int(rows.chunk_index[i]))
                doc.add_unsigned("token_start", int(rows.token_start[i]))
                doc.add_unsigned("token_end", int(rows.token_end[i]))
                doc.add_text("text", text)
                writer.add_document(doc)
                if bar is not None and (i + 1) % PROGRESS_EVERY == 0:
                    bar.update(PROGRESS_EVERY)

        _write(index, add)
    except ValueError as err:  # tantivy reports every failure, a full disk included, as ValueError
        raise _write_failed(generation, err, new.texts) from err
    finally:
        if bar is not None:
            bar.update(len(new) - bar.n)
            bar.close()


def _update_documents(generation: Path, earlier: LexicalIndex | None, new: Any) -> int:
    """Index afresh, in the document index of ``generation``, every document that ``new`` adds chunks to; its
    number of documents. A document's text is all its chunks in order: ``new``'s, after those ``earlier`` (the
    generation this one replaces; None when the index is made anew) already holds."""
    parts: dict[str, list[tuple[int, str]]] = {}
    for doc_id, chunk_index, text in zip(new.rows.doc_id, new.rows.chunk_index, new.texts):
        parts.setdefault(str(doc_id), []).append((int(chunk_index), text))
    try:
        if earlier is None:
            (generation / DOCUMENTS).mkdir()
            documents = tantivy.Index(documents_schema(), path=str(generation / DOCUMENTS), reuse=False)
            documents.register_tokenizer(TOKENIZER, english_analyzer())
        else:
            documents = _open(generation / DOCUMENTS)

        def add(writer: tantivy.IndexWriter) -> None:
            for doc_id, chunks in parts.items():
                if earlier is not None:
                    chunks = [(hit.chunk_index, hit.text) for hit in earlier.document_chunks(doc_id)] + chunks
                    writer.delete_documents_by_term("doc_id", doc_id)
                doc = tantivy.Document()
                doc.add_text("doc_id", doc_id)
                doc.add_text("text", "".join(text for _, text in sorted(chunks)))
                writer.add_document(doc)

        _write(documents, add)
        documents.reload()
        return documents.searcher().num_docs
    except ValueError as err:
        raise _write_failed(generation, err, new.texts) from err


def _write(index: tantivy.Index, add: Callable[[tantivy.IndexWriter], None]) -> None:
    """Open a writer on ``index``, ``add`` to it, commit, and wait for its merges. If anything fails, the
    writer is rolled back and its threads are joined before the error goes on: a writer left to the garbage
    collector can still write segment files into the temp directory that the caller is removing."""
    writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
    try:
        add(writer)
        _commit(writer)
    except BaseException:
        for stop in (writer.rollback, writer.wait_merging_threads):
            try:
                stop()
            except ValueError:  # a writer that already failed may refuse either
                pass
        raise
    writer.wait_merging_threads()
    # a second writer's garbage collection deletes the files of segments merged away, so the generation
    # holds (and meta.json records) only live files
    cleaner = index.writer(heap_size=15_000_000, num_threads=1)
    cleaner.garbage_collect_files()
    cleaner.wait_merging_threads()


def _commit(writer: tantivy.IndexWriter) -> None:
    writer.commit()


def _write_failed(generation: Path, err: ValueError, texts: list[str]) -> OSError:
    """The OSError for a failed tantivy write: out of space (ENOSPC) when the message says so or the disk
    has less room than the write needs -- tantivy's worker threads often report only "writer was killed"."""
    needed = 2 * sum(len(t) for t in texts) + 16 * 2 ** 20
    message = str(err)
    if "No space left" in message or "os error 28" in message or shutil.disk_usage(generation).free < needed:
        import errno
        return OSError(errno.ENOSPC, f"tantivy: {message}")
    return OSError(f"tantivy could not write the lexical index in {generation}: {message}")


def _write_meta(directory: Path, meta: LexicalMeta) -> None:
    """Commit ``meta`` as the current generation (atomically: the old meta.json or the whole new one)."""
    atomic_write_bytes(directory / META_NAME, meta.to_json())


def _named_generation(directory: Path) -> str | None:
    """The generation directory ``meta.json`` names (None when it is absent or unreadable)."""
    try:
        return LexicalMeta.from_json((directory / META_NAME).read_bytes(), directory / META_NAME).directory
    except (OSError, ValueError):
        return None
