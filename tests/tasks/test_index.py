"""FAISS indexes of a run: round trip, id mapping, training limits, exactly-once incremental updates."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docstream.model.pooling import POOLINGS
from docstream.store.reader import EmbeddingRows, last_seq
from docstream.tasks import index as index_module
from docstream.tasks import index_files
from docstream.tasks.embed import chunk_vectors
from docstream.tasks.index import (
    DiskFullError,
    IdTable,
    IndexDamagedError,
    build_index,
    index_dir,
    load_index,
    read_meta,
    search_index,
    training_minimum,
    update_index,
)
from tests.tasks import DIM, run_corpus, write_corpus


@pytest.fixture(scope="module")
def out(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, 6, seed=21, min_words=5, max_words=50)
    return run_corpus(model_path, root, tmp_path_factory.mktemp("run") / "out")


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("pooling", POOLINGS)
def test_round_trip_and_id_mapping(out, pooling):
    result = update_index(out, pooling)
    rows = chunk_vectors(out, pooling)
    meta = result.meta
    assert (meta.factory, meta.metric, meta.pooling, meta.dimension) == ("Flat", "cosine", pooling, DIM)
    assert meta.seq == last_seq(out) and meta.count == result.added == len(rows)
    assert _files(result.path) == sorted([".lock", "meta.json", meta.index_file, meta.ids_file])
    loaded = load_index(out, pooling)
    assert loaded.index.ntotal == len(loaded.ids) == len(rows)
    # faiss id i is row i of the embeddings, and maps back to its chunk
    for i in range(len(rows)):
        chunk = loaded.ids.row(i)
        assert (chunk.doc_id, chunk.chunk_index, chunk.token_start, chunk.token_end) == (
            rows.doc_id[i], rows.chunk_index[i], rows.token_start[i], rows.token_end[i])
    # each stored vector finds itself first, with cosine 1
    hits = loaded.search(rows.vectors, k=3)
    assert [h[0][0] for h in hits] == list(range(len(rows)))
    np.testing.assert_allclose([h[0][1] for h in hits], 1.0, atol=1e-5)
    # the same results as an index built in memory from the same vectors
    fresh = search_index(build_index(rows.vectors), rows.vectors, k=3)
    assert [[i for i, _ in h] for h in hits] == [[i for i, _ in h] for h in fresh]
    with pytest.raises(IndexError, match="outside the id table"):
        loaded.ids.row(len(rows))


def test_update_twice_adds_nothing(out):
    first = update_index(out, "last")
    before = _files(first.path)
    again = update_index(out, "last")
    assert again.added == 0 and again.meta == first.meta and _files(again.path) == before


def test_factory_mismatch_needs_rebuild(out):
    update_index(out, "mean")
    with pytest.raises(ValueError, match=r"'Flat'.*not 'HNSW32'.*rebuild=True"):
        update_index(out, "mean", factory="HNSW32")
    rebuilt = update_index(out, "mean", factory="HNSW32", rebuild=True)
    assert rebuilt.meta.factory == "HNSW32" and rebuilt.meta.count == len(chunk_vectors(out, "mean"))
    assert rebuilt.meta.generation > 1 and len(list(rebuilt.path.glob("index-*.faiss"))) == 1
    loaded = load_index(out, "mean")
    assert isinstance(faiss.downcast_index(loaded.index), faiss.IndexHNSWFlat)
    with pytest.raises(ValueError, match="metric 'cosine', not 'HNSW32' with metric 'l2'"):
        update_index(out, "mean", factory="HNSW32", metric="l2")


def test_ivf_on_a_run_with_too_few_vectors_is_refused(out):
    n = len(chunk_vectors(out, "state"))
    with pytest.raises(ValueError, match=rf"'IVF64,Flat' needs training on at least 2496 vectors .* only {n}"):
        update_index(out, "state", factory="IVF64,Flat", rebuild=True)


def test_training_limits_with_synthetic_vectors():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((700, DIM)).astype(np.float32)
    with pytest.raises(ValueError, match=r"'IVF16,Flat' needs training on at least 624 vectors .* only 100"):
        build_index(vectors[:100], "IVF16,Flat")
    ivf = build_index(vectors, "IVF16,Flat")
    assert ivf.is_trained and ivf.ntotal == 700
    hits = search_index(ivf, vectors[:5], k=1, params="nprobe=16")
    assert [h[0][0] for h in hits] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"'IVF16,PQ8' needs training on at least 9984 vectors .* only 700"):
        build_index(vectors, "IVF16,PQ8")
    assert build_index(vectors, "IVF16,PQ8x4").ntotal == 700
    assert training_minimum(faiss.index_factory(DIM, "HNSW32")) == 0
    assert training_minimum(faiss.index_factory(DIM, "OPQ8,IVF32,PQ8x4")) == 39 * 32


def test_bad_factory_metric_and_params_are_clear():
    vectors = np.eye(4, DIM, dtype=np.float32)
    with pytest.raises(ValueError, match="cannot build index factory 'Bogus9'"):
        build_index(vectors, "Bogus9")
    with pytest.raises(ValueError, match="unknown metric 'dot'"):
        build_index(vectors, metric="dot")
    with pytest.raises(ValueError, match="do not apply"):
        search_index(build_index(vectors), vectors, k=1, params="nonsense=3")
    with pytest.raises(ValueError, match="dimension 3"):
        search_index(build_index(vectors), np.ones((1, 3)), k=1)


def test_l2_and_ip_metrics(out):
    rows = chunk_vectors(out, "last")
    for metric in ("l2", "ip"):
        hits = search_index(build_index(rows.vectors, metric=metric), rows.vectors[:4], k=1, metric=metric)
        assert [h[0][0] for h in hits] == [0, 1, 2, 3]


def test_no_index_yet_and_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        update_index(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"identity": {}, "settings": {}}))
    with pytest.raises(ValueError, match="no committed embeddings yet"):
        update_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="docstream index --run"):
        load_index(tmp_path)


def test_resumed_run_adds_only_new_commits_exactly_once(model_path, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 4, seed=31, min_words=5, max_words=40)
    out = run_corpus(model_path, corpus, tmp_path / "out")
    first = update_index(out)
    assert first.added == first.meta.count == len(chunk_vectors(out)) and first.meta.seq == last_seq(out)
    assert update_index(out).added == 0
    # more documents arrive; the run resumes on the same directory and commits only them
    write_corpus(corpus, 3, seed=32, min_words=5, max_words=40, first=4)
    run_corpus(model_path, corpus, out)
    rows = chunk_vectors(out)
    second = update_index(out)
    assert second.meta.seq == last_seq(out) > first.meta.seq
    assert second.added == len(rows) - first.meta.count > 0 and second.meta.count == len(rows)
    loaded = load_index(out)
    keys = [(loaded.ids.doc_id[i], loaded.ids.chunk_index[i]) for i in range(len(loaded.ids))]
    assert len(set(keys)) == len(keys) == len(rows)
    assert set(keys) == set(zip(rows.doc_id, rows.chunk_index))
    assert {k[0] for k in keys[first.meta.count:]} == {f"doc{i:03d}.txt" for i in range(4, 7)}
    assert update_index(out).added == 0 and load_index(out).index.ntotal == len(rows)


def test_crash_before_the_meta_keeps_the_old_index(model_path, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 3, seed=41, min_words=5, max_words=30)
    out = run_corpus(model_path, corpus, tmp_path / "out")
    old = update_index(out).meta
    write_corpus(corpus, 2, seed=42, min_words=5, max_words=30, first=3)
    run_corpus(model_path, corpus, out)

    def crash(directory, meta):
        raise OSError("simulated crash before the meta is written")

    monkeypatch.setattr(index_module, "_write_meta", crash)
    with pytest.raises(OSError, match="simulated crash"):
        update_index(out)
    monkeypatch.undo()
    # the meta still names the old files, which still load; the new generation's files are removed
    directory = index_dir(out)
    assert _files(directory) == sorted([".lock", "meta.json", old.index_file, old.ids_file])
    assert read_meta(out) == old and load_index(out).index.ntotal == old.count
    # the next update adds the missed commits once and removes the orphaned files
    new = update_index(out)
    assert new.meta.count == len(chunk_vectors(out)) and new.added == new.meta.count - old.count
    assert _files(directory) == sorted([".lock", "meta.json", new.meta.index_file, new.meta.ids_file])


def test_id_table_round_trip(tmp_path):
    ids = IdTable(np.array(["a", "b"], dtype=object), np.array([0, 3], np.int32), np.array([0, 48], np.int64),
                  np.array([16, 60], np.int64))
    ids.write(tmp_path / "ids.parquet")
    back = IdTable.read(tmp_path / "ids.parquet")
    assert [back.row(i) for i in range(2)] == [ids.row(i) for i in range(2)]


# ---------------------------------------------------------------------------------------------
# Faults: damaged index files, a full disk


@pytest.fixture
def copy(out, tmp_path):
    """A copy of the module's run with a fresh 'mean' index of its own, to damage."""
    target = tmp_path / "out"
    shutil.copytree(out, target, ignore=shutil.ignore_patterns("index", ".lock"))
    update_index(target)
    return target


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_faiss_file_are_refused_until_rebuilt(copy):
    meta = read_meta(copy)
    path = index_dir(copy) / meta.index_file
    _flip_byte(path, path.stat().st_size - 7)  # inside the last stored vector
    assert faiss.read_index(str(path)).ntotal == meta.count  # FAISS itself notices nothing
    with pytest.raises(IndexDamagedError, match=rf"{meta.index_file} has sha256 .*--pooling mean --rebuild"):
        load_index(copy)
    with pytest.raises(IndexDamagedError, match=meta.index_file):
        update_index(copy)  # nothing is new, but the files are still checked
    rebuilt = update_index(copy, rebuild=True)
    assert rebuilt.added == meta.count and rebuilt.meta.generation == meta.generation + 1
    assert load_index(copy).index.ntotal == meta.count


@pytest.mark.parametrize("change", ["reorder", "rename"])
def test_changed_id_table_is_refused(copy, change):
    meta = read_meta(copy)
    path = index_dir(copy) / meta.ids_file
    table = pq.read_table(path)
    if change == "reorder":  # every vector would map to another chunk, with unchanged scores
        table = table.take(list(range(len(table)))[::-1])
    else:  # the first vector would map to another document
        doc_ids = table.column("doc_id").to_pylist()
        table = table.set_column(0, "doc_id", pa.array([doc_ids[-1], *doc_ids[1:]], pa.string()))
    pq.write_table(table, path, compression="zstd")
    assert len(IdTable.read(path)) == meta.count
    with pytest.raises(IndexDamagedError, match=rf"{meta.ids_file} has sha256 .*docstream verify --run"):
        load_index(copy)
    with pytest.raises(IndexDamagedError, match=meta.ids_file):
        update_index(copy)


def test_truncated_or_missing_files_are_clear_errors(copy):
    meta = read_meta(copy)
    directory = index_dir(copy)
    path = directory / meta.index_file
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(IndexDamagedError, match=rf"{meta.index_file} has sha256 .*--rebuild"):
        load_index(copy)
    with pytest.raises(IndexDamagedError, match=meta.index_file):
        update_index(copy)  # before: "0 added", and every search crashed in FAISS
    meta = update_index(copy, rebuild=True).meta
    (directory / meta.ids_file).unlink()
    with pytest.raises(IndexDamagedError, match=rf"{meta.ids_file} is missing"):
        update_index(copy)
    assert update_index(copy, rebuild=True).meta.count == meta.count


def test_meta_without_checksums_is_loaded_and_rebuilt_by_the_next_update(copy):
    path = index_dir(copy) / "meta.json"
    fields = json.loads(path.read_text())
    del fields["index_sha256"], fields["ids_sha256"]
    path.write_text(json.dumps(dict(fields, format=1)))
    old = read_meta(copy)
    assert not old.verifiable and load_index(copy).index.ntotal == old.count
    result = update_index(copy)
    assert result.added == old.count and result.meta.verifiable and result.meta.generation == old.generation + 1
    assert update_index(copy).added == 0


def _no_space(path):
    """A write that gets some bytes out, then finds the disk full."""
    with open(path, "wb") as f:
        f.write(b"\0" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("stage", ["index", "ids", "meta"])
def test_full_disk_leaves_no_partial_files_and_says_what_to_do(copy, monkeypatch, stage):
    old = read_meta(copy)
    directory = index_dir(copy)
    before = _files(directory)
    if stage == "index":
        monkeypatch.setattr(index_module, "_write_faiss", lambda index, path: _no_space(path))
    elif stage == "ids":
        monkeypatch.setattr(index_files.pq, "write_table", lambda table, path, **options: _no_space(path))
    else:
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: _no_space(self))
    with pytest.raises(DiskFullError) as caught:
        update_index(copy, rebuild=True)
    monkeypatch.undo()
    err = caught.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and "\n" not in str(err)
    assert str(directory) in str(err) and "free some space" in str(err) and "nothing already committed" in str(err)
    # no temp file, no half generation: the old index is still the current one and loads
    assert _files(directory) == before and read_meta(copy) == old and load_index(copy).index.ntotal == old.count
    assert update_index(copy, rebuild=True).meta.count == old.count


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_tmpfs(copy, tmp_path):
    """The same on a real full file system: a 256 KiB tmpfs mounted over OUT/index."""
    shutil.rmtree(copy / "index")
    mount = copy / "index"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        first = update_index(copy)
        directory = index_dir(copy)
        before = _files(directory)
        with open(mount / "filler", "wb", buffering=0) as f, pytest.raises(OSError, match="No space"):
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(DiskFullError, match=rf"no space left .* {directory}/.*free some space"):
            update_index(copy, rebuild=True)
        assert _files(directory) == before and load_index(copy).index.ntotal == first.meta.count
        (mount / "filler").unlink()
        assert update_index(copy, rebuild=True).meta.count == first.meta.count
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_rows_retracted_since_the_last_update_make_it_rebuild(model_path, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 3, seed=43, min_words=5, max_words=30)
    out = run_corpus(model_path, corpus, tmp_path / "out")
    first = update_index(out)
    write_corpus(corpus, 2, seed=44, min_words=5, max_words=30, first=3)
    run_corpus(model_path, corpus, out)
    # as if a commit after the index's seq retracted doc000.txt (e.g. its file changed mid-run): the reader
    # leaves its rows out and names it in ``retracted`` when reading past a commit that retracted it
    gone, real = "doc000.txt", index_module.read_embeddings

    def read_embeddings(out, pooling, after_seq=0, upto_seq=None):
        got = real(out, pooling, after_seq, upto_seq)
        live = got.rows.doc_id != gone
        rows = EmbeddingRows(*(getattr(got.rows, name)[live] for name in
                               ("doc_id", "chunk_index", "token_start", "token_end", "vectors")))
        return replace(got, rows=rows, retracted=frozenset({gone} if after_seq else ()))

    monkeypatch.setattr(index_module, "read_embeddings", read_embeddings)
    live = read_embeddings(out, "mean").rows
    assert gone in set(load_index(out).ids.doc_id) and len(live) < len(chunk_vectors(out))
    result = update_index(out)
    loaded = load_index(out)
    assert result.added == result.meta.count == len(live) == loaded.index.ntotal  # built afresh
    assert gone not in set(loaded.ids.doc_id) and result.meta.generation == first.meta.generation + 1
    assert list(loaded.ids.doc_id) == list(live.doc_id)
