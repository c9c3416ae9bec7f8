"""`docstream verify`: a sound run, damaged and stale indexes found and repaired, the run's own files only reported."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from docstream.checksum import sha256_file
from docstream.cli import main
from docstream.store.reader import last_seq
import docstream.tasks.verify as verify_module
from docstream.store.run_store import Problem, RunStore
from docstream.tasks.index import index_dir, load_index, read_meta, update_index
from docstream.tasks.verify import EXIT_PROBLEMS, EXIT_SOUND, verify_run
from tests.tasks import run_corpus, write_corpus


@pytest.fixture(scope="module")
def base(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, 5, seed=61, min_words=5, max_words=40)
    return run_corpus(model_path, root, tmp_path_factory.mktemp("run") / "out")


@pytest.fixture
def out(base, tmp_path):
    """A copy of the module's run with 'mean' and 'last' indexes of its own."""
    target = tmp_path / "out"
    shutil.copytree(base, target, ignore=shutil.ignore_patterns("index", ".lock"))
    update_index(target, "mean")
    update_index(target, "last", factory="HNSW32", metric="ip")
    return target


def _run_files(out):
    """sha256 of every file of the run itself (not its indexes)."""
    return {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*"))
            if p.is_file() and "index" not in p.relative_to(out).parts}


def _verify(out, *flags, capsys):
    code = main(["verify", "--run", str(out), *flags])
    return code, capsys.readouterr().out.strip().splitlines()


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_sound_run(out, capsys):
    records = list(RunStore(out).commit_records())
    parts = sum(len(r["files"]) for r in records)
    report = verify_run(out)
    assert report.sound and report.exit_code == EXIT_SOUND and not report.notes
    assert (report.commits, report.parts, report.indexes) == (last_seq(out), parts, 2) and len(records) > 1
    code, lines = _verify(out, capsys=capsys)
    assert code == EXIT_SOUND and lines == [f"sound: {len(records)} commits, {parts} parts, 2 indexes checked"]
    code, lines = _verify(out, "--json", capsys=capsys)
    data = json.loads(lines[0])
    assert code == EXIT_SOUND and len(lines) == 1
    assert (data["sound"], data["problems"], data["commits"], data["indexes"]) == (True, [], len(records), 2)


def test_damaged_indexes_are_listed_and_rebuilt_without_touching_the_run(out, capsys):
    mean, last = read_meta(out, "mean"), read_meta(out, "last")
    faiss_file = index_dir(out, "mean") / mean.index_file
    _flip_byte(faiss_file, faiss_file.stat().st_size - 5)
    ids_file = index_dir(out, "last") / last.ids_file
    ids_file.write_bytes(ids_file.read_bytes()[:100])
    before = _run_files(out)
    code, lines = _verify(out, capsys=capsys)
    assert code == EXIT_PROBLEMS and len(lines) == 2
    assert lines[0].startswith(f"{ids_file}: has sha256 ") and "--pooling last --factory 'HNSW32' --metric ip --rebuild" in lines[0]
    assert lines[1].startswith(f"{faiss_file}: has sha256 ") and "--pooling mean --rebuild" in lines[1]
    assert "fix: the index is derived data" in lines[1]

    code, lines = _verify(out, "--repair", capsys=capsys)
    assert code == EXIT_SOUND and len(lines) == 3, lines
    assert lines[0].startswith(f"repaired: {index_dir(out, 'last')}: rebuilt (HNSW32, ip)")
    assert lines[1].startswith(f"repaired: {index_dir(out, 'mean')}: rebuilt (Flat, cosine)")
    assert lines[2].startswith("sound: ")
    assert _run_files(out) == before
    assert load_index(out, "mean").meta.count == mean.count and load_index(out, "last").meta.factory == "HNSW32"
    assert verify_run(out).sound


def _ahead(out, meta_path, meta):
    meta_path.write_text(json.dumps(dict(meta, seq=meta["seq"] + 3)))


def _other_run(out, meta_path, meta):
    meta_path.write_text(json.dumps(dict(meta, run_identity="0" * 64)))


def _no_checksums(out, meta_path, meta):
    del meta["index_sha256"], meta["ids_sha256"]
    meta_path.write_text(json.dumps(dict(meta, format=1)))


def _garbled_meta(out, meta_path, meta):
    meta_path.write_text(meta_path.read_text()[:40])


def _no_meta(out, meta_path, meta):
    meta_path.unlink()


def _no_ids(out, meta_path, meta):
    (meta_path.parent / meta["ids_file"]).unlink()


@pytest.mark.parametrize("damage, says", [
    (_ahead, "includes commit .* but the run's newest commit is"),
    (_other_run, "was built from another run"),
    (_no_checksums, "records no checksums"),
    (_garbled_meta, "is not a docstream index description"),
    (_no_meta, r"is missing, so the files here \(ids-000001.parquet, index-000001.faiss\) are no usable index"),
    (_no_ids, r"ids-000001.parquet: is missing"),
])
def test_each_stale_or_broken_index_is_found_and_repaired(out, damage, says):
    meta_path = index_dir(out, "mean") / "meta.json"
    damage(out, meta_path, json.loads(meta_path.read_text()))
    report = verify_run(out)
    assert not report.sound and len(report.problems) == 1
    problem = report.problems[0]
    assert problem.path.startswith(str(index_dir(out, "mean")))
    assert report.lines() == [f"{problem.path}: {problem.problem}; fix: {problem.fix}"]
    assert re.search(says, report.lines()[0])
    assert "--rebuild" in problem.fix and "verify --run" in problem.fix
    repaired = verify_run(out, repair=True)
    assert repaired.sound and len(repaired.repaired) == 1 and "rebuilt (Flat, cosine)" in repaired.repaired[0]
    assert read_meta(out, "mean").verifiable and read_meta(out, "mean").seq == last_seq(out)


def test_stray_entries_under_index_are_reported_never_removed(out):
    (out / "index" / "mine").mkdir()
    (out / "index" / "mine" / "notes.txt").write_text("keep me")
    report = verify_run(out, repair=True)
    assert [p.path for p in report.problems] == [str(out / "index" / "mine")] and report.exit_code == EXIT_PROBLEMS
    assert "move it out" in report.problems[0].fix and not report.repaired
    assert (out / "index" / "mine" / "notes.txt").read_text() == "keep me"


def test_an_index_behind_the_run_is_a_note_and_repair_updates_it(model_path, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 2, seed=62, min_words=5, max_words=30)
    out = run_corpus(model_path, corpus, tmp_path / "out")
    first = update_index(out)
    write_corpus(corpus, 1, seed=63, min_words=5, max_words=30, first=2)
    run_corpus(model_path, corpus, out)
    behind = last_seq(out) - first.meta.seq
    report = verify_run(out)
    assert report.sound and report.notes == (f"{index_dir(out)}: {behind} commits behind the run; the next "
                                              f"`docstream index` or search adds them",)
    repaired = verify_run(out, repair=True)
    assert repaired.sound and not repaired.notes and "updated (Flat, cosine)" in repaired.repaired[0]
    assert read_meta(out).seq == last_seq(out) and read_meta(out).generation == first.meta.generation + 1


def test_run_problems_are_reported_and_left_to_the_user(out, monkeypatch, capsys):
    found = [Problem(str(out / "commits" / "00000002.json"), "cannot be parsed", "restore it from a backup")]
    monkeypatch.setattr(verify_module, "verify_store", lambda store: list(found))
    before = _run_files(out)
    code, lines = _verify(out, "--repair", capsys=capsys)
    assert code == EXIT_PROBLEMS and lines == [f"{out}/commits/00000002.json: cannot be parsed; fix: restore it "
                                               f"from a backup"]
    assert _run_files(out) == before


def test_damaged_embeddings_part_blocks_the_index_rebuild(out):
    record = next(r for r in RunStore(out).commit_records() if "embeddings" in r["files"])
    part = out / record["files"]["embeddings"]["path"]
    _flip_byte(part, part.stat().st_size // 2)
    damaged = part.read_bytes()
    meta = read_meta(out, "mean")
    (index_dir(out, "mean") / meta.ids_file).unlink()
    report = verify_run(out, repair=True)
    paths = [p.path for p in report.problems]
    assert str(part) in paths and str(index_dir(out, "mean")) in paths, report.lines()
    rebuild = report.problems[paths.index(str(index_dir(out, "mean")))]
    assert rebuild.problem.startswith("could not be rebuilt") and "repair the run's own files first" in rebuild.fix
    assert part.read_bytes() == damaged  # the run's own file is never rewritten
