"""Hybrid search end to end: both retrievers fused, each hit naming who found it, the modes, batch queries
from a file, the embedder index (refusing another embedder's vectors), verify over the search indexes, a
query that never imports torch, and `docstream run` keeping the indexes up to date across a resume."""
from __future__ import annotations

import json
import shutil

import pytest

from docstream.cli import build_parser
from docstream.model.embedding import EmbedderSpec, write_embedder_spec
from docstream.tasks.chunk_text import read_chunk_texts
from docstream.tasks.fusion import RRF_K, leading_gap
from docstream.tasks.index import load_index, read_meta, update_index
from docstream.tasks.lexical import load_lexical
from docstream.tasks.search import DENSE_WEIGHT, LEXICAL_CLEAR_GAP, Searcher
from docstream.tasks.verify import verify_run
from docstream.tokenizer import default_world_vocab_path
from tests.helpers import imported_by
from tests.tasks import DIM, make_model, run_corpus, write_corpus

KEYWORD = "xylophone"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def out(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("hybrid")
    write_corpus(root / "corpus", 9, seed=61, min_words=30, max_words=80)
    (root / "corpus" / "doc004.txt").write_text(f"The {KEYWORD} sat in the garden.\nRiver stone light.")
    out = run_corpus(model, root / "corpus", root / "out", chunk_len=24)
    Searcher(out)  # builds the lexical and embedder indexes
    return out


@pytest.fixture
def copy(out, tmp_path):
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out"


def _call(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_a_chunks_own_text_is_found_first_by_both_retrievers(out):
    chunks = read_chunk_texts(out)
    searcher = Searcher(out)
    for i in (0, 5, len(chunks) - 1):
        top = searcher.search(chunks.texts[i], k=5)[0]
        assert (top.doc_id, top.chunk_index) == (chunks.rows.doc_id[i], chunks.rows.chunk_index[i])
        assert top.retrievers == {"lexical": 1, "dense": 1}
        assert top.score == pytest.approx((1 + _dense_weight(out, chunks.texts[i])) / (RRF_K + 1))
        assert top.snippet is not None and top.snippet.split()[0] in chunks.texts[i]


def _dense_weight(out, query: str) -> float:
    """The dense ranking's weight in the hybrid fusion of ``query``."""
    lexical = Searcher(out, mode="lexical").search(query, k=100, snippets=False)
    return 0.0 if leading_gap([(h.doc_id, h.score) for h in lexical]) >= LEXICAL_CLEAR_GAP else DENSE_WEIGHT


def test_dense_votes_count_unless_bm25s_best_document_stands_out(out):
    hybrid = Searcher(out)
    weights = set()
    for query in (f"where is the {KEYWORD}?", "river stone light", "the garden", "quiet morning paper light"):
        weight = _dense_weight(out, query)
        weights.add(weight)
        hits = hybrid.search(query, k=10)
        for hit in hits:
            assert hit.score == pytest.approx(sum((1.0 if name == "lexical" else weight) / (RRF_K + rank)
                                                  for name, rank in hit.retrievers.items()))
        if weight == 0.0:  # the lexical order, untouched
            lexical = Searcher(out, mode="lexical").search(query, k=10)
            found = [h for h in hits if "lexical" in h.retrievers]
            assert [(h.doc_id, h.chunk_index) for h in found] == \
                [(h.doc_id, h.chunk_index) for h in lexical][:len(found)]
    assert weights == {0.0, DENSE_WEIGHT}  # both kinds of query were met


def test_each_mode_uses_its_retrievers_only(out):
    lexical = Searcher(out, mode="lexical").search(f"where is the {KEYWORD}?", k=3)
    assert lexical[0].doc_id == "doc004.txt" and lexical[0].retrievers == {"lexical": 1}
    assert all(set(h.retrievers) == {"lexical"} for h in lexical)
    dense = Searcher(out, mode="dense").search(f"where is the {KEYWORD}?", k=3)
    assert [h.retrievers for h in dense] == [{"dense": 1}, {"dense": 2}, {"dense": 3}]
    assert dense[0].score >= dense[1].score >= dense[2].score
    hybrid = Searcher(out).search(f"where is the {KEYWORD}?", k=20)
    assert any(set(h.retrievers) == {"lexical", "dense"} for h in hybrid)
    assert [h.rank for h in hybrid] == list(range(1, len(hybrid) + 1))
    with pytest.raises(ValueError, match="unknown search mode 'fuzzy'"):
        Searcher(out, mode="fuzzy")


def test_search_many_equals_one_query_at_a_time(out):
    searcher = Searcher(out)
    queries = ["river stone", f"{KEYWORD} garden", "", "quiet morning paper", "!!!", "  \n"]
    found = searcher.search_many(queries, k=4)
    assert found == [searcher.search(q, k=4) for q in queries]
    assert found[2] == found[5] == [] and all(found[i] for i in (0, 1, 3))
    for mode in ("dense", "lexical"):
        assert Searcher(out, mode=mode).search("   ", k=3) == []


def test_encode_gives_the_vectors_the_index_holds(out):
    searcher = Searcher(out, mode="dense")
    chunks = read_chunk_texts(out)
    vector = searcher.encode([chunks.texts[3]])
    found = searcher.index.search(vector, 1)[0][0]
    assert searcher.index.ids.row(found[0]).chunk_id == chunks.rows.row(3) and found[1] == pytest.approx(1, abs=1e-4)
    with pytest.raises(ValueError, match="list of texts"):
        searcher.encode("one text")


def test_the_query_path_imports_neither_torch_nor_pyarrow(out):
    code = ("from docstream.tasks.search import Searcher; "
            f"hits = Searcher({str(out)!r}).search('river stone', k=3); assert len(hits) == 3")
    assert imported_by(code, ["torch", "pyarrow.dataset"]) == []


def test_cli_queries_file_writes_json_lines(out, tmp_path, capsys):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"id": "a", "query": KEYWORD}) + "\n\n" + json.dumps({"query": "river"}) + "\n")
    assert _call(["search", "--run", str(out), "--queries", str(queries), "-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["id"], line["query"]) for line in lines] == [("a", KEYWORD), ("3", "river")]
    assert all(len(line["hits"]) == 2 for line in lines) and lines[0]["hits"][0]["doc_id"] == "doc004.txt"
    plain = tmp_path / "queries.txt"
    plain.write_text(f"{KEYWORD}\nriver stone\n")
    assert _call(["search", "--run", str(out), "--queries", str(plain), "--mode", "lexical"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["1", "2"]
    queries.write_text('{"id": 1, "query": "fine"}\n{"id": 2, "q": "no query field"}\n')
    with pytest.raises(ValueError, match="line 2 has no \"query\""):
        _call(["search", "--run", str(out), "--queries", str(queries)])
    with pytest.raises(ValueError, match="one of the two"):
        _call(["search", "--run", str(out), "text", "--queries", str(queries)])


def test_an_index_of_another_embedder_is_refused_until_rebuilt(copy, model, tmp_path):
    other = tmp_path / "embedder" / "model.pth"
    other.parent.mkdir()
    shutil.copyfile(model, other)
    write_embedder_spec(other.with_name("model.embedder.json"),
                        EmbedderSpec(pooling="eos", eos_token=0, tokenizer="rwkv_vocab_v20230424.txt", dimension=DIM))
    with pytest.raises(ValueError, match="another embedder"):
        Searcher(copy, embedder=other)
    update_index(copy, "embedder", embedder=other, rebuild=True)
    meta = read_meta(copy, "embedder")
    assert (meta.dimension, meta.embedder_name) == (DIM, str(other))
    assert Searcher(copy, embedder=other).search("river", k=2)[0].retrievers
    with pytest.raises(ValueError, match="another embedder"):
        Searcher(copy)  # the built-in embedder's vectors are no longer the ones indexed


def test_verify_checks_and_repairs_both_search_indexes(copy):
    lexical, dense = load_lexical(copy), load_index(copy, "embedder")
    victims = [copy / "index" / "lexical" / lexical.meta.directory / next(iter(lexical.meta.files)),
               copy / "index" / "embedder" / dense.meta.index_file]
    for path in victims:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    report = verify_run(copy)
    assert {str(victim) for victim in victims} <= {p.path for p in report.problems}
    report = verify_run(copy, repair=True)
    assert not report.problems and len(report.repaired) == 2 and report.indexes == 2
    assert Searcher(copy).search("river stone", k=1)


def test_run_keeps_the_search_indexes_up_to_date_across_a_resume(model, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 4, seed=62, min_words=20, max_words=60)
    argv = ["run", "--model", str(model), "--tokenizer", str(default_world_vocab_path()), "--input", str(corpus),
            "--out", str(tmp_path / "out"), "--chunk-len", "16", "--quiet"]
    assert _call(argv) == 0
    write_corpus(corpus, 3, seed=63, min_words=20, max_words=60, first=4)
    assert _call(argv) == 0
    chunks = read_chunk_texts(tmp_path / "out")
    lexical, dense = load_lexical(tmp_path / "out"), load_index(tmp_path / "out", "embedder")
    keys = {(c.doc_id, c.chunk_index) for c in lexical.chunks()}
    assert len(keys) == lexical.meta.count == dense.meta.count == len(chunks) and len({d[:6] for d, _ in keys}) == 7
    assert lexical.meta.seq == dense.meta.seq == chunks.last_seq


def test_an_index_of_an_earlier_built_in_embedder_is_rebuilt_by_the_next_search(copy):
    meta_path = copy / "index" / "embedder" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["embedder_name"] == "builtin"
    meta["embedder"] = "0" * 64  # as an index built by the built-in embedder of an earlier docstream
    meta_path.write_text(json.dumps(meta))
    hits = Searcher(copy).search("river stone", k=2)
    assert hits and read_meta(copy, "embedder").embedder != "0" * 64
