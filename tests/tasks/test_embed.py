"""Per-chunk and per-document vectors of a run, and query text embedded exactly as the run embeds."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from docstream.model.pooling import POOLINGS
from docstream.store.reader import EmbeddingRows, document_rows
from docstream.tasks.embed import (
    QueryEmbedder,
    chunk_vectors,
    document_vectors,
    embed_text,
    l2_normalize,
    mean_by_document,
)
from tests.tasks import DIM, make_model, run_corpus, write_corpus

#: vectors of the same text computed in other batches (other row counts through the BLAS) agree to float32
#: rounding; bitwise on some CPUs, not on all (see README, "Reproducibility")
BATCHING_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    texts = write_corpus(root, 5, seed=11, min_words=20, max_words=50)
    texts["short.txt"] = "Quiet river stone under the copper lantern."
    (root / "short.txt").write_text(texts["short.txt"])
    return root, texts


@pytest.fixture(scope="module")
def out(tmp_path_factory, model, corpus):
    return run_corpus(model, corpus[0], tmp_path_factory.mktemp("run") / "out")


@pytest.fixture(scope="module")
def embedder(out):
    return QueryEmbedder(out)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_chunk_vectors_have_the_model_width(out, pooling):
    rows = chunk_vectors(out, pooling)
    docs = document_rows(out)
    assert len(rows) == sum(d["n_chunks"] for d in docs) > len(docs)  # some documents have several chunks
    assert rows.vectors.shape == (len(rows), DIM) and rows.vectors.dtype == np.float32
    assert np.isfinite(rows.vectors).all() and (np.linalg.norm(rows.vectors, axis=1) > 0).all()
    keys = set(zip(rows.doc_id, rows.chunk_index))
    assert len(keys) == len(rows)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_document_vectors_are_normalized_chunk_means(out, corpus, pooling):
    docs = document_vectors(out, pooling)
    assert docs.doc_ids == sorted(corpus[1]) and docs.vectors.shape == (len(corpus[1]), DIM)
    np.testing.assert_allclose(np.linalg.norm(docs.vectors, axis=1), 1.0, rtol=1e-5)
    rows = chunk_vectors(out, pooling)
    for doc_id in docs.doc_ids:
        mine = rows.vectors[rows.doc_id == doc_id]
        assert docs.n_chunks[docs.doc_ids.index(doc_id)] == len(mine)
        np.testing.assert_allclose(docs.vector(doc_id), l2_normalize(mine.mean(axis=0)), rtol=1e-5, atol=1e-6)


def test_document_vector_of_unknown_document_is_a_key_error(out):
    with pytest.raises(KeyError, match="nope"):
        document_vectors(out).vector("nope")


def test_mean_by_document_of_nothing_is_empty():
    rows = EmbeddingRows.empty(DIM)
    docs = mean_by_document(rows)
    assert len(docs) == 0 and docs.vectors.shape == (0, DIM)


def test_query_embedding_reproduces_the_runs_final_chunk(out, corpus, embedder):
    rows = {p: chunk_vectors(out, p) for p in POOLINGS}
    docs = {d["doc_id"]: d for d in document_rows(out)}
    multi = [doc_id for doc_id, d in docs.items() if d["n_chunks"] > 1][:2]
    single = [doc_id for doc_id, d in docs.items() if d["n_chunks"] == 1][:1]
    assert multi and single
    for doc_id in multi + single:
        got = embedder.embed_all(corpus[1][doc_id])
        last = docs[doc_id]["n_chunks"] - 1
        for pooling in POOLINGS:
            r = rows[pooling]
            want = r.vectors[(r.doc_id == doc_id) & (r.chunk_index == last)][0]
            # the run batched the document with others: other row counts, float32 rounding apart
            np.testing.assert_allclose(got[pooling], want, **BATCHING_TOL)


def test_embed_many_matches_one_at_a_time(corpus, embedder):
    texts = [corpus[1]["short.txt"], corpus[1]["doc000.txt"], "Seven winter engines."]
    many = embedder.embed_many(texts, "mean", batch_size=2)
    assert many.shape == (3, DIM)
    for text, vector in zip(texts, many):
        np.testing.assert_allclose(vector, embedder.embed(text, "mean"), **BATCHING_TOL)


def test_embed_text_convenience(out, corpus, embedder):
    text = corpus[1]["short.txt"]
    np.testing.assert_array_equal(embed_text(out, text, "state"), embedder.embed(text, "state"))


def test_bad_inputs_are_refused_clearly(out, embedder, tmp_path, model):
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        embedder.embed("text", "max")
    with pytest.raises(ValueError, match="at least one token"):
        embedder.embed("")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        QueryEmbedder(tmp_path)
    other = tmp_path / "other.pth"
    shutil.copyfile(model, other)
    with open(other, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="not the one the run .* used"):
        QueryEmbedder(out, model=other)
    with pytest.raises(FileNotFoundError, match="does not exist here"):
        QueryEmbedder(out, model=tmp_path / "missing.pth")
