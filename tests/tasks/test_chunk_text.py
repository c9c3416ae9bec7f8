"""Chunk texts come from the tokens a run stores, exactly once per commit range, and from the corpus for
chunks of runs made before tokens were stored."""
from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from docstream.checksum import sha256_file
from docstream.corpus import Document
from docstream.corpus.chunker import text_of_span
from docstream.store.reader import read_chunk_tokens, read_embeddings
from docstream.tasks.chunk_text import read_chunk_texts, run_tokenizer
from tests.tasks import make_model, run_corpus, write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunks")
    texts = write_corpus(root / "corpus", 7, seed=5, min_words=20, max_words=90)
    out = run_corpus(make_model(root / "model"), root / "corpus", root / "out")
    return out, root / "corpus", texts


def test_texts_are_the_chunks_spans(run):
    out, corpus, texts = run
    chunks = read_chunk_texts(out)
    tokenizer = run_tokenizer(out)
    assert len(chunks) == len(read_embeddings(out).rows) > len(texts)
    for i, text in enumerate(chunks.texts):
        chunk = chunks.rows.row(i)
        doc = Document.from_text(chunk.doc_id, texts[chunk.doc_id])
        assert text == text_of_span(doc, tokenizer, chunk.token_start, chunk.token_end)
        assert len(chunks.tokens[i]) == chunk.token_end - chunk.token_start
    whole = {d: "".join(t for t, doc in zip(chunks.texts, chunks.rows.doc_id) if doc == d) for d in texts}
    assert whole == texts


def test_reading_from_the_last_seq_gives_only_what_came_since(run):
    out, _, _ = run
    first = read_chunk_texts(out, upto_seq=2)
    rest = read_chunk_texts(out, after_seq=first.last_seq)
    everything = read_chunk_texts(out)
    assert first.texts + rest.texts == everything.texts
    assert read_chunk_texts(out, after_seq=everything.last_seq).texts == []


def test_chunks_of_a_run_without_stored_tokens_are_read_from_the_corpus(run, tmp_path):
    out, corpus, _ = run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    _drop_token_columns(old)
    assert all(t is None for t in read_chunk_tokens(old).rows.tokens)
    assert read_chunk_texts(old).texts == read_chunk_texts(out).texts


def test_without_tokens_and_without_the_corpus_the_error_names_what_to_do(run, tmp_path):
    out, corpus, _ = run
    old, moved = tmp_path / "old", tmp_path / "moved"
    shutil.copytree(out, old)
    _drop_token_columns(old)
    shutil.copytree(corpus, moved)
    for path in corpus.iterdir():  # the run's corpus is gone
        path.rename(moved / f"gone-{path.name}")
    try:
        with pytest.raises(FileNotFoundError, match="put the corpus back"):
            read_chunk_texts(old)
    finally:
        for path in moved.glob("gone-*"):
            path.rename(corpus / path.name[len("gone-"):])


def _drop_token_columns(out):
    """Rewrite the embeddings parts as a run made before tokens were stored wrote them (and their records'
    checksums with them)."""
    import json

    names = {}
    for path in sorted((out / "embeddings").glob("part-*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["tokens"]), path)
        names[path.name] = sha256_file(path)
    for record_path in sorted((out / "commits").glob("*.json")):
        record = json.loads(record_path.read_text())
        entry = record["files"].get("embeddings")
        if entry is not None:
            entry["sha256"] = names[entry["path"].rsplit("/", 1)[-1]]
        record_path.write_text(json.dumps(record))
