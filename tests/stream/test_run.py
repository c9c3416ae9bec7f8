"""End-to-end runs: resume after SIGKILL, independence from batch size and chunking, hostile corpora."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from docstream.model import State
from docstream.store.run_store import RunLockedError, RunStore
from docstream.stream.run import run
from docstream.tokenizer import default_world_vocab_path
from tests.blas_variation import vary_rounding_by_row_count
from tests.helpers import ROOT, make_model, nested_corpus, random_text, run_config
from tests.stream.tables import RUN_TOL, assert_same_outputs, assert_states_close
from tests.stream.tables import sorted_tables as _tables


def test_outputs_are_complete_and_consistent(model_path, tmp_path):
    corpus = nested_corpus(tmp_path / "corpus", 7, seed=0)
    summary = run(run_config(model_path, corpus, tmp_path / "out"))
    t = _tables(tmp_path / "out")
    assert summary.processed == 7 and len(t["documents"]) == 7 and not t["errors"]
    for doc in t["documents"]:
        rows = [r for r in t["embeddings"] if r["doc_id"] == doc["doc_id"]]
        assert [r["chunk_index"] for r in rows] == list(range(doc["n_chunks"]))
        assert rows[0]["token_start"] == 0 and rows[-1]["token_end"] == doc["n_tokens"]
        assert all(a["token_end"] == b["token_start"] for a, b in zip(rows, rows[1:]))
        assert all(len(r["embedding"]) == 32 for r in rows)
        snaps = [r for r in t["snapshots"] if r["doc_id"] == doc["doc_id"]]
        want = sorted({i for i in range(doc["n_chunks"]) if (i + 1) % 2 == 0} | {doc["n_chunks"] - 1})
        assert [r["chunk_index"] for r in snaps] == want
        assert snaps[-1]["is_final"] and State.from_bytes(snaps[-1]["state"]).batch_size == 1
    # the files are ordinary Parquet
    part = next((tmp_path / "out" / "embeddings").glob("part-*.parquet"))
    assert pq.read_table(part).num_rows > 0
    # a second run on the same directory finds everything done
    again = run(run_config(model_path, corpus, tmp_path / "out"))
    assert again.processed == 0 and again.skipped == 7
    assert _tables(tmp_path / "out") == t


@pytest.mark.parametrize("blas", ["this machine's", "rounding by row count"])
def test_results_do_not_depend_on_batch_size(model_path, tmp_path, monkeypatch, blas):
    if blas == "rounding by row count":
        vary_rounding_by_row_count(monkeypatch)
    corpus = nested_corpus(tmp_path / "corpus", 9, seed=1)
    results = [_tables(_run_to(tmp_path / f"b{b}", model_path, corpus, batch_size=b)) for b in (1, 3, 8)]
    assert_same_outputs(results[1], results[0])
    assert_same_outputs(results[2], results[0])
    if blas == "rounding by row count":  # the stand-in BLAS did change the last bits
        assert results[0]["embeddings"] != results[1]["embeddings"]


def test_chunk_length_does_not_change_the_stream(model_path, tmp_path):
    corpus = nested_corpus(tmp_path / "corpus", 5, seed=2)
    a = _tables(_run_to(tmp_path / "c16", model_path, corpus, chunk_len=16, snapshot_every=1))
    b = _tables(_run_to(tmp_path / "c48", model_path, corpus, chunk_len=48, snapshot_every=1))
    final = lambda t: [r for r in t["snapshots"] if r["is_final"]]  # noqa: E731
    assert [(r["doc_id"], r["token_end"]) for r in final(a)] == [(r["doc_id"], r["token_end"]) for r in final(b)]
    for x, y in zip(final(a), final(b)):  # other chunk lengths are other row counts: float32 rounding
        assert_states_close(State.from_bytes(x["state"]), State.from_bytes(y["state"]), x["doc_id"])
    # every chunk end of the long chunking is also a chunk end of the short one: same vectors there
    short = {(r["doc_id"], r["token_end"]): r["embedding"] for r in a["embeddings"]}
    for r in b["embeddings"]:
        np.testing.assert_allclose(short[(r["doc_id"], r["token_end"])], r["embedding"], **RUN_TOL)
    assert [d["n_tokens"] for d in a["documents"]] == [d["n_tokens"] for d in b["documents"]]


def _run_to(out, model_path, corpus, **kw):
    run(run_config(model_path, corpus, out, **kw))
    return out


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(model_path, tmp_path):
    corpus = nested_corpus(tmp_path / "corpus", 14, seed=3, max_words=1500)
    reference = _tables(_run_to(tmp_path / "ref", model_path, corpus, commit_every=3))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "docstream.cli", "run", "--model", str(model_path),
           "--tokenizer", str(default_world_vocab_path()), "--input", str(corpus), "--out", str(out),
           "--chunk-len", "16", "--batch-size", "3", "--snapshot-every", "2", "--commit-every", "3", "--quiet"]
    rng = random.Random(42)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        commits_before = len(list((out / "commits").glob("*.json"))) if out.exists() else 0
        target = commits_before + rng.randint(1, 6)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and len(list((out / "commits").glob("*.json"))) >= target:
                time.sleep(rng.uniform(0, 0.05))
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the runs finished before they could be interrupted; make the corpus larger"
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    # every row exactly once; resumed documents shared batches with other companions than in the
    # reference run, so their vectors and states agree to float32 rounding (bitwise on this machine)
    assert_same_outputs(_tables(out), reference)


def test_hostile_documents_are_processed_or_recorded(model_path, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("A plain good document.\nWith two lines.")
    (corpus / "empty.txt").write_text("")
    (corpus / "blank.md").write_text("   \n\t\n  ")
    (corpus / "bad_utf8.txt").write_bytes(b"valid start \xff\xfe broken \xc3 bytes end")
    (corpus / "nul.txt").write_bytes(b"text with a \x00 NUL inside")
    (corpus / "long_line.txt").write_text("word " * 60_000)
    (corpus / "dir.txt").mkdir()  # a directory with a text suffix cannot be read as a document
    (corpus / "image.png").write_bytes(b"\x89PNG not text")
    summary = run(run_config(model_path, corpus, tmp_path / "out", chunk_len=256))
    t = _tables(tmp_path / "out")
    done = {d["doc_id"]: d for d in t["documents"]}
    assert set(done) == {"good.txt", "bad_utf8.txt", "nul.txt", "long_line.txt"}
    assert done["bad_utf8.txt"]["invalid_utf8_bytes"] == 3
    assert done["nul.txt"]["nul_chars"] == 1
    reasons = {e["doc_id"]: e["reason"] for e in t["errors"]}
    assert reasons["empty.txt"] == "empty" and reasons["blank.md"] == "empty"
    assert reasons["dir.txt"] == "unreadable"
    assert summary.rejected["empty"] == 2 and summary.invalid_utf8_bytes == 3 and summary.nul_chars == 1
    assert all(e["detail"] for e in t["errors"])


def test_jsonl_duplicates_and_bad_lines_are_recorded(model_path, tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"key": 1, "body": "first document"}), "{not json", json.dumps({"key": 1, "body": "dup"}),
             json.dumps({"key": 2}), json.dumps({"key": 3, "body": "third document"})]
    path.write_text("\n".join(lines) + "\n")
    run(run_config(model_path, path, tmp_path / "out", id_field="key", text_field="body"))
    t = _tables(tmp_path / "out")
    assert [d["doc_id"] for d in t["documents"]] == ["1", "3"]
    assert sorted(e["reason"] for e in t["errors"]) == sorted(["bad_json", "duplicate_id", "missing_field"])


def test_a_duplicate_id_keeps_every_chunk_of_the_still_streaming_first_document(model_path, tmp_path):
    rng = random.Random(5)
    docs = [("1", random_text(rng, 300)), ("2", "short"), ("1", "the duplicate"), ("3", random_text(rng, 60))]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    run(run_config(model_path, path, tmp_path / "out", batch_size=2, snapshot_every=4))
    t = _tables(tmp_path / "out")
    assert [e["reason"] for e in t["errors"]] == ["duplicate_id"]
    chunks = {d["doc_id"]: d["n_chunks"] for d in t["documents"]}
    assert chunks["1"] > 4  # still streaming when its duplicate arrives
    for doc_id, n in chunks.items():
        assert [e["chunk_index"] for e in t["embeddings"] if e["doc_id"] == doc_id] == list(range(n))


def test_resume_with_other_settings_or_model_is_refused(model_path, tmp_path):
    corpus = nested_corpus(tmp_path / "corpus", 2, seed=4)
    run(run_config(model_path, corpus, tmp_path / "out"))
    with pytest.raises(ValueError, match="chunk_len"):
        run(run_config(model_path, corpus, tmp_path / "out", chunk_len=32))
    other = make_model(tmp_path, seed=2)
    with pytest.raises(ValueError, match="model_fingerprint"):
        run(run_config(other, corpus, tmp_path / "out"))
    # batch size is not a result setting: changing it resumes fine
    assert run(run_config(model_path, corpus, tmp_path / "out", batch_size=1)).skipped == 2


def test_missing_paths_fail_before_any_work(model_path, tmp_path):
    corpus = nested_corpus(tmp_path / "corpus", 1, seed=5)
    for kw, name in ((dict(model=tmp_path / "no.pth"), "no.pth"), (dict(tokenizer=tmp_path / "no.txt"), "no.txt"),
                     (dict(input=tmp_path / "nowhere"), "nowhere")):
        with pytest.raises(FileNotFoundError, match=name):
            run(run_config(model_path, corpus, tmp_path / "out", **kw))
        assert not (tmp_path / "out").exists()


def test_a_second_writer_is_locked_out(model_path, tmp_path):
    store = RunStore(tmp_path / "out")
    store.acquire()
    try:
        with pytest.raises(RunLockedError, match="another docstream run"):
            run(run_config(model_path, nested_corpus(tmp_path / "corpus", 1, seed=6), tmp_path / "out"))
    finally:
        store.release()


def test_cli_run_and_badrun_config(model_path, tmp_path):
    corpus = nested_corpus(tmp_path / "corpus", 2, seed=7)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"chunk_len: 32\nbatch_size: 2\ntokenizer: {default_world_vocab_path()}\n")
    env = dict(os.environ)
    base = [sys.executable, "-m", "docstream.cli", "run", "--model", str(model_path), "--input", str(corpus)]
    ok = subprocess.run(base + ["--out", str(tmp_path / "out"), "--config", str(cfg), "--quiet"],
                        cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["settings"]["chunk_len"] == 32 and saved["settings"]["batch_size"] == 2
    # the command line brings the search indexes up to date: one vector and one text per committed chunk
    chunks = RunStore(tmp_path / "out").read_table("embeddings").num_rows
    for index in ("embedder", "lexical"):
        assert json.loads((tmp_path / "out" / "index" / index / "meta.json").read_text())["count"] == chunks
    cfg.write_text("chunk_len: -3\n")
    bad = subprocess.run(base + ["--out", str(tmp_path / "out2"), "--config", str(cfg),
                                 "--tokenizer", str(default_world_vocab_path())],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "chunk_len" in bad.stderr


@pytest.mark.parametrize("settings, message", [
    ({"device": "cpu"}, "cuda_graphs needs device 'cuda' and engine 'local' \\(got device 'cpu'"),
    ({"device": "cuda", "engine": "ray"}, "engine 'ray'"),
])
def test_cuda_graphs_outside_a_local_gpu_run_is_refused_by_name(model_path, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        run_config(model_path, tmp_path, tmp_path / "out", cuda_graphs=True, **settings)
