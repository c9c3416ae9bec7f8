"""Search with known answers (a query that is a document's exact single chunk) and the CLI commands."""
from __future__ import annotations

import json
from typing import get_args

import pytest

from docstream.store.reader import document_rows
from docstream.tasks.index import read_meta
from docstream.cli import build_parser
from docstream.tasks.search import Hit, Searcher, format_hits, search, shorten
from tests.tasks import make_model, run_corpus, write_corpus

CHUNK_LEN = 96  # every document below fits in one chunk


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root, 8, seed=51, min_words=4, max_words=25)


@pytest.fixture(scope="module")
def out(tmp_path_factory, model, corpus):
    out = run_corpus(model, corpus[0], tmp_path_factory.mktemp("run") / "out", chunk_len=CHUNK_LEN)
    assert all(d["n_chunks"] == 1 for d in document_rows(out))
    return out


@pytest.fixture(scope="module")
def searcher(out):
    return Searcher(out, "mean", mode="dense")


def _call(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("doc_id", ["doc000.txt", "doc003.txt", "doc007.txt"])
def test_exact_text_of_a_document_ranks_it_first(searcher, corpus, doc_id):
    hits = searcher.search(corpus[1][doc_id], k=5)
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    top = hits[0]
    assert top.doc_id == doc_id and top.score == pytest.approx(1.0, abs=1e-5)
    assert all(h.score < top.score - 1e-6 for h in hits[1:])
    assert (top.chunk_index, top.token_start) == (0, 0)
    n_tokens = {d["doc_id"]: d["n_tokens"] for d in document_rows(searcher.out)}[doc_id]
    assert top.token_end == n_tokens
    assert top.snippet == shorten(corpus[1][doc_id])


@pytest.mark.parametrize("pooling", ["mean", "state"])
def test_every_pooling_finds_the_exact_document(out, corpus, pooling):
    hits = search(out, corpus[1]["doc005.txt"], k=3, pooling=pooling, mode="dense")
    assert hits[0].doc_id == "doc005.txt" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert read_meta(out, pooling).factory == "Flat"


def test_k_larger_than_the_index(searcher, corpus):
    hits = searcher.search("river stone", k=50, snippets=False)
    assert len(hits) == len(corpus[1]) and all(h.snippet is None for h in hits)


def test_snippets_are_capped_and_come_from_the_run_not_the_corpus(tmp_path, model):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 2, seed=52, min_words=150, max_words=160)
    out = run_corpus(model, corpus, tmp_path / "out", chunk_len=512)
    text = (corpus / "doc000.txt").read_text()
    hits = search(out, text, k=2, pooling="mean", mode="dense")
    assert hits[0].doc_id == "doc000.txt" and len(hits[0].snippet) == 200 and hits[0].snippet.endswith("…")
    (corpus / "doc001.txt").unlink()  # the texts are the run's stored tokens, in the lexical index
    again = search(out, text, k=2, pooling="mean", mode="dense")
    assert [h.snippet for h in again] == [h.snippet for h in hits] and all(h.snippet for h in hits)
    missing = Hit(1, 0.5, "gone.txt", 0, 0, 10, None, {"dense": 1})
    assert "(text unavailable)" in format_hits([missing])


def test_cli_search_prints_a_ranked_table(out, corpus, capsys):
    assert _call(["search", "--run", str(out), corpus[1]["doc002.txt"], "-k", "3", "--mode", "dense",
                  "--pooling", "mean"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "doc", "id", "chunk", "tokens", "found", "snippet"]
    assert len(lines) == 4
    first = lines[1].split()
    assert first[:3] == ["1", "1.0000", "doc002.txt"] and first[3] == "0" and first[5] == "D1"
    assert " ".join(first[6:]) == shorten(corpus[1]["doc002.txt"], 80)


def test_cli_search_json_lines(out, corpus, capsys):
    assert _call(["search", "--run", str(out), corpus[1]["doc004.txt"], "-k", "4", "--pooling", "mean",
                  "--factory", "Flat", "--mode", "dense", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert set(hits[0]) == {"rank", "score", "doc_id", "chunk_index", "token_start", "token_end", "snippet",
                            "retrievers"}
    assert [h["retrievers"] for h in hits] == [{"dense": 1}, {"dense": 2}, {"dense": 3}, {"dense": 4}]
    assert hits[0]["doc_id"] == "doc004.txt" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_cli_index_builds_updates_and_rebuilds(out, capsys):
    assert _call(["index", "--run", str(out), "--pooling", "state"]) == 0
    assert "state index 'Flat' (cosine, 32-d)" in capsys.readouterr().out
    assert _call(["index", "--run", str(out), "--pooling", "state", "--factory", "HNSW32", "--rebuild"]) == 0
    printed = capsys.readouterr().out
    assert "state index 'HNSW32' (cosine, 32-d)" in printed and "8 vectors, 8 added" in printed
    assert _call(["index", "--run", str(out), "--pooling", "state", "--factory", "HNSW32"]) == 0
    assert "8 vectors, 0 added" in capsys.readouterr().out
    # search keeps the existing factory unless told otherwise, and refuses a mismatch clearly
    assert _call(["search", "--run", str(out), "garden", "-k", "2", "--pooling", "state", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(ValueError, match="'HNSW32'.*not 'Flat'.*rebuild"):
        _call(["search", "--run", str(out), "garden", "--pooling", "state", "--factory", "Flat"])
    # --index, the factory's old name on search, still works (hidden from --help)
    with pytest.raises(ValueError, match="'HNSW32'.*not 'Flat'.*rebuild"):
        _call(["search", "--run", str(out), "garden", "--pooling", "state", "--index", "Flat"])


def test_cli_rejects_bad_k_and_pooling(out, capsys):
    with pytest.raises(ValueError, match="-k must be at least 1"):
        _call(["search", "--run", str(out), "garden", "-k", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--run", str(out), "garden", "--pooling", "max"])
    assert "invalid choice: 'max'" in capsys.readouterr().err


def test_cli_choices_match_the_library():
    from docstream.model.pooling import DEFAULT_POOLING, POOLINGS
    from docstream.tasks import index
    from docstream.tasks import search as search_module
    from docstream.tasks.config import DensePooling, IndexConfig, Metric, Pooling, SearchConfig, SearchMode

    assert get_args(Pooling) == POOLINGS and get_args(Metric) == index.METRICS
    assert get_args(DensePooling) == (index.EMBEDDER, *POOLINGS) and get_args(SearchMode) == search_module.MODES
    assert IndexConfig().pooling == SearchConfig(query="q").pooling == search_module.DEFAULT_POOLING == index.EMBEDDER
    assert SearchConfig(query="q").mode == search_module.DEFAULT_MODE == "hybrid"
    assert DEFAULT_POOLING == "mean"  # the run's own default pooling, for dense search over the run's vectors
    assert IndexConfig().factory == search_module.DEFAULT_FACTORY == index.DEFAULT_FACTORY
