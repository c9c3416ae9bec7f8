"""The lexical (tantivy BM25) index of a run: search, exactly-once updates, crashes, damage, a full disk."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import tantivy

from docstream.corpus.chunk_id import ChunkIdColumns
from docstream.store.reader import last_seq, run_identity
from docstream.tasks import chunk_text, lexical
from docstream.tasks.index_files import IndexDamagedError
from docstream.tasks.lexical import (
    DiskFullError,
    check_lexical,
    lexical_dir,
    load_lexical,
    read_lexical_meta,
    update_lexical,
)
from tests.helpers import imported_by
from tests.tasks import run_corpus, write_corpus

ROOT = Path(__file__).resolve().parents[2]
KEYWORD_DOC = "zz-keyword.txt"
KEYWORD_TEXT = "Nothing here but a xylophones recital.\n" * 3


@pytest.fixture(scope="module")
def out(tmp_path_factory, model_path):
    """A run of 8 small documents and one with a rare word, in several commits."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, 8, seed=61, min_words=5, max_words=40)
    (root / KEYWORD_DOC).write_text(KEYWORD_TEXT)
    out = run_corpus(model_path, root, tmp_path_factory.mktemp("run") / "out")
    assert last_seq(out) >= 3
    return out


@pytest.fixture
def copy(out, tmp_path):
    """A copy of the module's run without an index, to index, crash and damage."""
    target = tmp_path / "out"
    shutil.copytree(out, target, ignore=shutil.ignore_patterns("index", ".lock"))
    return target


def _upto(monkeypatch, seq):
    """Make updates see the run as it was at commit ``seq``."""
    monkeypatch.setattr(chunk_text, "read_chunk_texts", partial(chunk_text.read_chunk_texts, upto_seq=seq))


def _contents(out):
    """Every indexed chunk in row order: (row, doc_id, chunk_index, token_start, token_end, text)."""
    return [(hit.row, hit.doc_id, hit.chunk_index, hit.token_start, hit.token_end, hit.text)
            for hit in load_lexical(out).chunks()]


def _expected(out):
    texts = chunk_text.read_chunk_texts(out)
    rows = texts.rows
    return [(i, rows.doc_id[i], int(rows.chunk_index[i]), int(rows.token_start[i]), int(rows.token_end[i]),
             texts.texts[i]) for i in range(len(texts))]


def _entries(directory):
    return sorted(p.name for p in directory.iterdir())


def _term_documents(out):
    """Each index term -> the ids of the documents whose entry in the document index holds it (a check of the
    entries' contents that BM25 statistics, which count replaced entries until tantivy merges, do not touch)."""
    index = load_lexical(out)
    schema, searcher = index.documents.schema, index.document_searcher
    # the chunks' own terms too: a word cut at a chunk boundary is two terms in the chunks, one in the document
    terms = {term for hit in index.chunks() for term in index.analyzer.analyze(hit.text)}
    found = {term: sorted(searcher.doc(address).get_first("doc_id") for _, address in
                          searcher.search(tantivy.Query.term_query(schema, "text", term), limit=10_000).hits)
             for term in sorted(terms | set(_expected_term_documents(out)))}
    return {term: ids for term, ids in found.items() if ids}


def _expected_term_documents(out):
    """What :func:`_term_documents` should find: each document's text being all its chunks' texts in order."""
    texts = chunk_text.read_chunk_texts(out)
    whole = {}
    for i in sorted(range(len(texts)), key=lambda i: int(texts.rows.chunk_index[i])):
        whole[texts.rows.doc_id[i]] = whole.get(texts.rows.doc_id[i], "") + texts.texts[i]
    analyzer, found = lexical.english_analyzer(), {}
    for doc_id, text in whole.items():
        for term in set(analyzer.analyze(text)):
            found.setdefault(term, []).append(doc_id)
    return {term: sorted(ids) for term, ids in found.items()}


def test_keyword_query_finds_its_chunk_and_snippet_text(copy):
    result = update_lexical(copy)
    texts = chunk_text.read_chunk_texts(copy)
    assert result.added == result.meta.count == len(texts) and result.meta.seq == last_seq(copy)
    assert _entries(result.path) == [".lock", result.meta.directory, "meta.json"]
    index = load_lexical(copy)
    hits = index.search("Xylophone", 3)  # stemmed and lower-cased on both sides
    assert hits and hits[0].doc_id == KEYWORD_DOC and "xylophones" in hits[0].text
    assert all(hit.doc_id == KEYWORD_DOC for hit in hits)
    assert hits[0].text == texts.texts[hits[0].row] and hits[0].doc_id == texts.rows.doc_id[hits[0].row]
    assert index.search_many(["xylophone", "qqqq"], 2) == [hits[:2], []]
    assert _contents(copy) == _expected(copy)


@pytest.mark.parametrize("query", ["", "   ", "the of and", '"unbalanced', "text:river", "(river", "river)",
                                   "AND", "OR NOT", "-", "river -", "a:b:c", "*", "river^2", "[1 TO 2]", "\\",
                                   "東京 river", "x" * 5000, "\x00"])
def test_hostile_queries_do_not_raise(copy, query):
    update_lexical(copy)
    index = load_lexical(copy)
    hits = index.search(query, 5)
    if not index.terms(query):  # nothing to look for: empty, stop words, punctuation only
        assert hits == []
    if "river" in query:
        assert hits and all("river" in hit.text.lower() for hit in hits)


def test_bad_k_and_query_type_are_refused(copy):
    update_lexical(copy)
    index = load_lexical(copy)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search("river", 0)
    with pytest.raises(TypeError, match="a lexical query is a string"):
        index.search(None, 3)


def test_updates_commit_by_commit_equal_one_build(copy, monkeypatch):
    final = last_seq(copy)
    counts = []
    for seq in range(1, final + 1):
        _upto(monkeypatch, seq)
        result = update_lexical(copy)
        counts.append(result.meta.count)
        assert result.meta.seq == seq and update_lexical(copy).added == 0
    monkeypatch.undo()
    assert counts == sorted(counts) and counts[-1] == len(chunk_text.read_chunk_texts(copy))
    assert _contents(copy) == _expected(copy)
    # documents that gained chunks in several commits were re-indexed whole each time, and are there once
    commits = [set(chunk_text.read_chunk_texts(copy, seq - 1, seq).rows.doc_id) for seq in range(1, final + 1)]
    assert any(len([ids for ids in commits if doc in ids]) > 1 for doc in set.union(*commits)), \
        "the fixture's run should have documents committed in pieces"
    assert read_lexical_meta(copy).documents == len(set.union(*commits))
    assert _term_documents(copy) == _expected_term_documents(copy)
    assert _entries(lexical_dir(copy)) == [".lock", read_lexical_meta(copy).directory, "meta.json"]


def test_resumed_runs_are_indexed_exactly_once(model_path, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 3, seed=62, min_words=5, max_words=30)
    out = run_corpus(model_path, corpus, tmp_path / "out")
    first = update_lexical(out)
    for batch in range(2):  # more documents arrive twice; the run resumes and commits only them
        write_corpus(corpus, 2, seed=63 + batch, min_words=5, max_words=30, first=3 + 2 * batch)
        run_corpus(model_path, corpus, out)
        update_lexical(out)
    meta = read_lexical_meta(out)
    contents = _contents(out)
    keys = [(row[1], row[2]) for row in contents]
    assert meta.count == len(contents) == len(set(keys)) == len(chunk_text.read_chunk_texts(out)) > first.meta.count
    assert contents == _expected(out) and meta.seq == last_seq(out)


_CHILD = """
import os, signal, sys
from docstream.tasks import lexical
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(lexical, sys.argv[2], die)
lexical.update_lexical(sys.argv[1])
"""


# before the document index is updated / after tantivy's commits / after the rename
@pytest.mark.parametrize("stop_at", ["_update_documents", "publish", "_write_meta"])
def test_sigkill_during_an_update_then_update_gives_the_same_index(copy, monkeypatch, stop_at):
    _upto(monkeypatch, last_seq(copy) - 1)
    old = update_lexical(copy).meta
    monkeypatch.undo()
    child = subprocess.run([sys.executable, "-c", _CHILD, str(copy), stop_at], cwd=ROOT, capture_output=True, check=False)
    assert child.returncode == -9, child.stderr.decode()
    directory = lexical_dir(copy)
    temp, final = f"gen-{old.generation + 1:06d}.tmp-", f"gen-{old.generation + 1:06d}"
    left = {"_update_documents": temp, "publish": temp, "_write_meta": final}[stop_at]
    assert any(name.startswith(left) for name in _entries(directory))  # the crash left a generation behind
    assert read_lexical_meta(copy) == old and len(load_lexical(copy)) == old.count  # the old one is current
    result = update_lexical(copy)
    assert result.added == result.meta.count - old.count > 0 and result.meta.generation == old.generation + 2
    assert _contents(copy) == _expected(copy) and _term_documents(copy) == _expected_term_documents(copy)
    assert _entries(directory) == [".lock", result.meta.directory, "meta.json"]  # no temp dir, no stale generation


def test_a_document_whose_words_fall_in_different_chunks_is_found_by_them(model_path, tmp_path):
    """Chunk scores get their document's: a document with both query words, in chunks far apart, comes
    before a chunk that has one of them twice (which leads when chunks are scored alone)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    filler = " ".join(["plain words fill the middle of this note"] * 12)
    (corpus / "both.txt").write_text(f"Harpsichord tuning notes. {filler} The theorbo was restrung.")
    (corpus / "one.txt").write_text("A harpsichord, and another harpsichord, stood in the hall.")
    (corpus / "none.txt").write_text(filler)
    out = run_corpus(model_path, corpus, tmp_path / "out")
    update_lexical(out)
    index = load_lexical(out)
    hits = index.search("harpsichord theorbo", 5)
    last = max(h.chunk_index for h in index.document_chunks("both.txt"))
    assert hits[0].doc_id == "both.txt" and last >= 2  # the words are chunks apart
    assert sorted((h.doc_id, h.chunk_index) for h in hits[:3]) == [("both.txt", 0), ("both.txt", last), ("one.txt", 0)]
    documents = index.document_scores(index.terms("harpsichord theorbo"))
    assert documents["both.txt"] > documents["one.txt"] > 0 and "none.txt" not in documents
    chunk_only = lexical.LexicalIndex(index.meta, index.index, None).search("harpsichord theorbo", 5)
    assert chunk_only[0].doc_id == "one.txt"  # alone, the chunk with the word twice would lead
    by_row = {h.row: h.score for h in chunk_only}
    for hit in hits:
        assert hit.score == pytest.approx(by_row[hit.row] + lexical.DOCUMENT_WEIGHT * documents[hit.doc_id])


def test_an_index_without_documents_is_searched_by_chunks_and_rebuilt_by_the_next_update(copy):
    """An index of format 1 (made before the document index) still answers, and the next update rebuilds it."""
    made = update_lexical(copy).meta
    directory = lexical_dir(copy)
    shutil.rmtree(directory / made.directory / lexical.DOCUMENTS)
    old = replace(made, format=1, documents=0, files={n: v for n, v in made.files.items()
                                                       if not n.startswith(lexical.DOCUMENTS + "/")})
    (directory / "meta.json").write_bytes(old.to_json())
    index = load_lexical(copy)
    assert index.documents is None and index.search("xylophone", 1)[0].doc_id == KEYWORD_DOC
    assert check_lexical(copy) == []
    result = update_lexical(copy)
    assert result.meta.format == lexical.META_FORMAT and result.meta.generation == made.generation + 1
    assert result.meta.documents == len({row[1] for row in _contents(copy)}) and load_lexical(copy).documents
    assert _term_documents(copy) == _expected_term_documents(copy)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_damaged_generation_is_refused_naming_the_file_until_rebuilt(copy, damage):
    meta = update_lexical(copy).meta
    name = max((n for n in meta.files if n.endswith(".store")), key=lambda n: meta.files[n]["size"])
    path = lexical_dir(copy) / meta.directory / name
    if damage == "flip":
        _flip_byte(path)
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:10])
    problem = {"flip": "has sha256", "delete": "is missing", "truncate": "has 10 bytes"}[damage]
    with pytest.raises(IndexDamagedError, match=rf"{name} {problem}.*--rebuild"):
        load_lexical(copy)
    with pytest.raises(IndexDamagedError, match=name):
        update_lexical(copy)  # nothing is new, but the files are still checked
    assert [(p.name, what.split()[0]) for p, what in check_lexical(copy)] == [(name, problem.split()[0])]
    rebuilt = update_lexical(copy, rebuild=True)
    assert rebuilt.meta.count == meta.count and rebuilt.meta.generation == meta.generation + 1
    assert check_lexical(copy) == [] and _contents(copy) == _expected(copy)


def test_garbled_meta_and_index_of_another_run(copy, out):
    update_lexical(copy)
    path = lexical_dir(copy) / "meta.json"
    fields = json.loads(path.read_text())
    path.write_text(json.dumps(dict(fields, run_identity="0" * 64)))
    with pytest.raises(ValueError, match="built from a run with other settings"):
        update_lexical(copy)
    assert check_lexical(copy, identity=run_identity(copy))[0][1].startswith("was built from another run")
    path.write_text(json.dumps(dict(fields, seq=fields["seq"] + 5)))
    with pytest.raises(IndexDamagedError, match=r"includes commit \d+ but the run's newest commit is \d+ \(the run folder was rewritten\)"):
        update_lexical(copy)
    path.write_text("{not json")
    with pytest.raises(IndexDamagedError, match="meta.json is not a docstream lexical index description"):
        load_lexical(copy)
    assert update_lexical(copy, rebuild=True).meta.count == fields["count"]


def test_no_index_yet_and_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        update_lexical(tmp_path)
    with pytest.raises(FileNotFoundError, match="docstream index --run"):
        load_lexical(tmp_path)
    assert check_lexical(tmp_path) == [] and read_lexical_meta(tmp_path) is None


def test_chunks_retracted_after_the_last_update_make_it_rebuild(copy, monkeypatch):
    _upto(monkeypatch, last_seq(copy) - 1)
    first = update_lexical(copy).meta
    monkeypatch.undo()
    gone, real = "doc000.txt", chunk_text.read_chunk_texts

    def read_chunk_texts(out, after_seq=0, upto_seq=None):  # as if a later commit retracted doc000.txt
        got = real(out, after_seq, upto_seq)
        live = [i for i in range(len(got)) if got.rows.doc_id[i] != gone]
        rows = ChunkIdColumns(*(column[live] for column in got.rows.ids()))
        return replace(got, rows=rows, texts=[got.texts[i] for i in live], tokens=[got.tokens[i] for i in live],
                       retracted=frozenset({gone} if after_seq else ()))

    monkeypatch.setattr(chunk_text, "read_chunk_texts", read_chunk_texts)
    assert gone in {row[1] for row in _contents(copy)}
    result = update_lexical(copy)
    live = read_chunk_texts(copy)
    assert result.added == result.meta.count == len(live) and result.meta.generation == first.generation + 1
    contents = _contents(copy)
    assert gone not in {row[1] for row in contents} and [row[1] for row in contents] == list(live.rows.doc_id)
    assert gone not in {d for ids in _term_documents(copy).values() for d in ids}


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("stage", ["link", "commit", "meta"])
def test_full_disk_keeps_the_old_generation_and_leaves_no_temp_dir(copy, monkeypatch, stage):
    _upto(monkeypatch, last_seq(copy) - 1)
    old = update_lexical(copy).meta
    monkeypatch.undo()
    directory = lexical_dir(copy)
    before = _entries(directory)
    if stage == "link":
        monkeypatch.setattr(os, "link", _no_space)
    elif stage == "commit":
        monkeypatch.setattr(lexical, "_commit", _no_space)
    else:
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: _no_space())
    with pytest.raises(DiskFullError) as caught:
        update_lexical(copy)
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and str(directory) in str(caught.value)
    assert "free some space" in str(caught.value) and "\n" not in str(caught.value)
    assert _entries(directory) == before and read_lexical_meta(copy) == old and len(load_lexical(copy)) == old.count
    assert update_lexical(copy).meta.count == len(chunk_text.read_chunk_texts(copy))


def test_tantivy_failures_say_when_the_disk_is_full(tmp_path, monkeypatch):
    err = ValueError("An error occurred in a thread: 'An index writer was killed.'")
    assert lexical._write_failed(tmp_path, err, ["text"]).errno is None  # room enough: another failure
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 6, 10 ** 6, 100))
    assert lexical._write_failed(tmp_path, err, ["text"]).errno == errno.ENOSPC
    # tantivy's worker threads report a full disk this way; the check of free space tells it apart


def test_query_path_imports_neither_torch_nor_pyarrow(copy):
    update_lexical(copy)
    probe = ("from docstream.tasks.lexical import load_lexical; "
             f"hits = load_lexical({str(copy)!r}).search('xylophone river', 5); assert hits")
    assert imported_by(probe, ["torch", "pyarrow", "faiss"]) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_tmpfs(copy):
    """The same on a real full file system (a 1 MiB tmpfs over OUT/index), where tantivy's own errors
    do not say why its writer failed."""
    mount = copy / "index"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        first = update_lexical(copy, rebuild=True)
        directory = lexical_dir(copy)
        before = _entries(directory)
        with open(mount / "filler", "wb", buffering=0) as f, pytest.raises(OSError, match="No space"):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(DiskFullError, match=rf"no space left .* {directory}/gen-.*free some space"):
            update_lexical(copy, rebuild=True)
        assert _entries(directory) == before and len(load_lexical(copy)) == first.meta.count
        (mount / "filler").unlink()
        assert update_lexical(copy, rebuild=True).meta.count == first.meta.count
    finally:
        subprocess.run(["umount", str(mount)], check=True)
