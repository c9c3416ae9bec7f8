"""Faults around a run folder: folders that are not docstream's, damaged or missing commit records and
parts, lost settings, documents that change between runs, fixed rejections, and a full disk. Each
fault gives a clear error naming the file, or is handled, and loses nothing committed."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from docstream.files import DiskFullError, is_temp_name
from docstream.store.check import verify_store
from docstream.store.reader import read_embeddings
from docstream.store.run_store import RunFolderError, RunStore, StoreDamagedError
from docstream.stream.run import run
from tests.helpers import ROOT
from tests.helpers import nested_corpus as _corpus
from tests.helpers import run_config as _config
from tests.stream.tables import assert_same_outputs
from tests.stream.tables import sorted_tables as _tables


class _Interrupted(Exception):
    """Stands in for a kill right after a commit."""


def _interrupt_after(monkeypatch, commits: int) -> None:
    """Make the next run stop (as if killed) right after its ``commits``-th commit."""
    done = []
    original = RunStore.commit

    def commit(self, *args, **kw):
        original(self, *args, **kw)
        done.append(1)
        if len(done) >= commits:
            raise _Interrupted

    monkeypatch.setattr(RunStore, "commit", commit)


def _interrupted_run(monkeypatch, config, commits: int) -> None:
    with monkeypatch.context() as m:
        _interrupt_after(m, commits)
        with pytest.raises(_Interrupted):
            run(config)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- folders docstream did not make ------------------------------------------------------------------
def test_out_that_is_not_a_docstream_folder_is_refused_and_untouched(model_path, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 2, seed=1)
    home = tmp_path / "H"
    (home / "documents").mkdir(parents=True)
    (home / "errors").mkdir()
    (home / "documents" / "cv.docx").write_text("cv")
    (home / "errors" / "app.log").write_text("l")
    before = _files(home)
    with pytest.raises(RunFolderError, match=f"{home}.*not empty and was not made by docstream"):
        run(_config(model_path, corpus, home))
    assert _files(home) == before and sorted(p.name for p in home.iterdir()) == ["documents", "errors"]
    # the CLI says the same in one line and exits 2
    cmd = [sys.executable, "-m", "docstream.cli", "run", "--model", str(model_path), "--input", str(corpus),
           "--out", str(home), "--quiet", "--no-index", "--tokenizer", str(_config(model_path, corpus, home).tokenizer)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "not made by docstream" in done.stderr and "Traceback" not in done.stderr
    assert _files(home) == before
    # a corpus root (which has a documents/ folder) is refused alike
    with pytest.raises(RunFolderError):
        run(_config(model_path, corpus, corpus))


def test_new_empty_and_own_folders_are_accepted(model_path, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 2, seed=2)
    (tmp_path / "empty").mkdir()
    assert run(_config(model_path, corpus, tmp_path / "empty")).processed == 2
    assert json.loads((tmp_path / "empty" / "docstream-run.json").read_text())["version"] >= 2
    assert run(_config(model_path, corpus, tmp_path / "empty")).skipped == 2
    # a foreign file later dropped into a run folder is left alone by clean-up
    (tmp_path / "empty" / "embeddings" / "notes.txt").write_text("mine")
    (tmp_path / "empty" / "snapshots" / "stray").mkdir()
    assert run(_config(model_path, corpus, tmp_path / "empty")).skipped == 2
    assert (tmp_path / "empty" / "embeddings" / "notes.txt").read_text() == "mine"


def test_cleanup_removes_only_an_interrupted_commits_files(model_path, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus", 4, seed=3, max_words=600)
    out = tmp_path / "out"
    _interrupted_run(monkeypatch, _config(model_path, corpus, out), commits=2)
    last = RunStore(out).progress().last_seq
    orphan = out / "embeddings" / f"part-{last + 1:08d}.parquet"
    orphan.write_bytes(b"half a part")
    temp = out / "snapshots" / ".part-00000009.parquet.tmp-123"
    temp.write_bytes(b"t")
    run(_config(model_path, corpus, out))
    assert not temp.exists()
    assert _tables(out)["documents"] and len(_tables(out)["documents"]) == 4


# -- missing or damaged commit records and parts -----------------------------------------------------
@pytest.fixture()
def finished_run(model_path, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 5, seed=4, max_words=500)
    out = tmp_path / "out"
    run(_config(model_path, corpus, out, commit_every=2))
    assert RunStore(out).progress().last_seq >= 4
    return corpus, out


@pytest.mark.parametrize("which", ["middle", "newest"])
def test_a_missing_commit_record_is_reported_and_nothing_is_deleted(model_path, finished_run, which):
    corpus, out = finished_run
    records = sorted((out / "commits").glob("*.json"))
    victim = records[2] if which == "middle" else records[-1]
    victim.unlink()
    before = _files(out)
    with pytest.raises(StoreDamagedError, match=victim.name):
        run(_config(model_path, corpus, out, commit_every=2))
    with pytest.raises(StoreDamagedError, match="docstream verify"):
        read_embeddings(out)
    after = _files(out)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before, "a damaged folder must not be repaired by deleting data"
    assert any(problem.path == str(victim) for problem in verify_store(RunStore(out)))


def test_a_flipped_byte_in_a_committed_part_is_caught_when_read(finished_run):
    _, out = finished_run
    part = sorted((out / "embeddings").glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x40
    part.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match=f"{part}.*checksum"):
        read_embeddings(out)
    with pytest.raises(StoreDamagedError, match=part.name):
        RunStore(out).read_table("embeddings")
    assert [p.path for p in verify_store(RunStore(out))] == [str(part)]


def test_a_damaged_snapshot_footer_names_the_file_on_resume(model_path, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus", 3, seed=5, max_words=900)
    out = tmp_path / "out"
    _interrupted_run(monkeypatch, _config(model_path, corpus, out), commits=1)
    ref = next(iter(RunStore(out).progress().in_flight.values()))
    part = out / ref.part
    data = bytearray(part.read_bytes())
    data[-12:-8] = b"\xff\xff\xff\x7f"  # the footer length
    part.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match=part.name):
        run(_config(model_path, corpus, out))


# -- lost or damaged settings ---------------------------------------------------------------------------
def test_lost_or_truncated_config_is_refused_naming_the_file(model_path, finished_run):
    corpus, out = finished_run
    config = out / "config.json"
    text = config.read_text()
    config.unlink()
    with pytest.raises(StoreDamagedError, match="config.json.*missing"):
        run(_config(model_path, corpus, out, commit_every=2, chunk_len=32))
    config.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="config.json"):
        run(_config(model_path, corpus, out, commit_every=2))
    config.write_text(text)
    with pytest.raises(ValueError, match="backend"):
        run(_config(model_path, corpus, out, commit_every=2, backend="torch"))


# -- documents that change between runs ---------------------------------------------------------------
def _edit_same_length(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[:5] + ("X" if text[5] != "X" else "Y") + text[6:])


def test_changed_and_vanished_in_flight_documents(model_path, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus", 6, seed=6, max_words=900)
    out = tmp_path / "out"
    _interrupted_run(monkeypatch, _config(model_path, corpus, out), commits=2)
    in_flight = sorted(RunStore(out).progress().in_flight)
    assert len(in_flight) >= 2, "the interrupted run must leave two documents unfinished"
    edited, deleted = in_flight[:2]
    _edit_same_length(corpus / edited)
    (corpus / deleted).unlink()
    summary = run(_config(model_path, corpus, out))
    assert summary.changed == 1 and summary.gone == 1
    run(_config(model_path, corpus, tmp_path / "fresh"))
    fresh, got = _tables(tmp_path / "fresh"), _tables(out)
    assert deleted not in {r["doc_id"] for table in got.values() for r in table}
    assert_same_outputs(got, fresh)
    assert deleted in RunStore(out).progress().gone
    index_rows = read_embeddings(out)
    assert deleted not in set(index_rows.rows.doc_id) and len(index_rows.rows) == len(fresh["embeddings"])


def test_a_finished_document_that_changed_is_redone(model_path, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 3, seed=7)
    out = tmp_path / "out"
    run(_config(model_path, corpus, out))
    victim = sorted(p for p in corpus.rglob("*.txt"))[0]
    victim.write_text(victim.read_text() + "\nA new closing line was added.")
    summary = run(_config(model_path, corpus, out))
    assert summary.changed == 1 and summary.processed == 1 and summary.skipped == 2
    run(_config(model_path, corpus, tmp_path / "fresh"))
    assert_same_outputs(_tables(out), _tables(tmp_path / "fresh"))


# -- rejections are keyed by content --------------------------------------------------------------------
def test_a_fixed_rejection_is_processed_on_the_next_run(model_path, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha river stone"}\n{"id": "b", "text": broken\n')
    out = tmp_path / "out"
    first = run(_config(model_path, corpus, out))
    assert first.processed == 1 and first.rejected["bad_json"] == 1
    again = run(_config(model_path, corpus, out))
    assert again.processed == 0 and not again.rejected, "a still-bad line is not recorded twice"
    corpus.write_text('{"id": "a", "text": "alpha river stone"}\n{"id": "b", "text": "beta garden light"}\n')
    fixed = run(_config(model_path, corpus, out))
    assert fixed.processed == 1 and fixed.skipped == 1
    tables = _tables(out)
    assert sorted(d["doc_id"] for d in tables["documents"]) == ["a", "b"] and tables["errors"] == []


def test_a_once_empty_file_is_processed_when_it_has_text(model_path, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 2, seed=8)
    (corpus / "later.txt").write_text("   \n")
    out = tmp_path / "out"
    assert run(_config(model_path, corpus, out)).rejected["empty"] == 1
    (corpus / "later.txt").write_text("Now the file has words: river stone light.")
    summary = run(_config(model_path, corpus, out))
    assert summary.processed == 1 and summary.skipped == 2
    assert "later.txt" in {d["doc_id"] for d in _tables(out)["documents"]} and _tables(out)["errors"] == []


# -- a full disk ----------------------------------------------------------------------------------------
def test_a_full_disk_gives_one_line_and_loses_nothing(model_path, tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "corpus", 4, seed=9, max_words=700)
    out = tmp_path / "out"
    writes = []
    original = Path.write_bytes

    def write_bytes(path, data):  # a part's bytes go to its temp file: the fifth such write runs out of space
        if "part-" in path.name:
            writes.append(path)
            if len(writes) >= 5:
                original(path, b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, data)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", write_bytes)
        with pytest.raises(DiskFullError, match="no space left on the device writing .*part-.*free some space") as err:
            run(_config(model_path, corpus, out))
    assert "\n" not in str(err.value)
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)], "a failed write leaves no temp file"
    run(_config(model_path, corpus, out))
    run(_config(model_path, corpus, tmp_path / "fresh"))
    assert_same_outputs(_tables(out), _tables(tmp_path / "fresh"))


@pytest.fixture()
def small_disk(tmp_path):
    """A 160 KiB tmpfs (root only; skipped where mounting is not allowed), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_then_resume_after_freeing_space(model_path, tmp_path, small_disk):
    corpus = _corpus(tmp_path / "corpus", 6, seed=10, max_words=900)
    out = small_disk / "out"
    config = _config(model_path, corpus, out)
    cmd = [sys.executable, "-m", "docstream.cli", "run", "--model", str(model_path), "--tokenizer",
           str(config.tokenizer), "--input", str(corpus), "--out", str(out), "--chunk-len", "16",
           "--batch-size", "3", "--snapshot-every", "2", "--commit-every", "5", "--quiet", "--no-index"]
    full = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 5, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.startswith("docstream: error")]
    assert len(lines) == 1 and lines[0] == full.stderr.strip().splitlines()[-1] and "no space left on the device writing" in lines[0] and str(out) in lines[0]
    assert not [p for p in out.rglob("*") if is_temp_name(p.name)]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    run(_config(model_path, corpus, tmp_path / "fresh"))
    assert_same_outputs(_tables(out), _tables(tmp_path / "fresh"))


def test_a_bare_bundled_vocabulary_name_works_in_run_settings(tmp_path, monkeypatch):
    from docstream.store.config import RunConfig
    from docstream.tokenizer import default_world_vocab_path

    monkeypatch.chdir(tmp_path)
    config = RunConfig(model="m.pth", tokenizer="rwkv_vocab_v20230424.txt", input="c", out="o")
    assert config.tokenizer == default_world_vocab_path()


def test_a_model_that_fails_to_load_leaves_no_settings_behind(model_path, tmp_path):
    """The model is loaded before the run records its settings: after a load that fails (here a
    checkpoint with a NaN weight), the same --out takes the corrected run instead of refusing it as
    'written by a run with other settings'."""
    import torch

    sd = torch.load(model_path, map_location="cpu", weights_only=True)
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 2)
    sd[name][0, 0] = float("nan")
    broken = tmp_path / "broken.pth"
    torch.save(sd, broken)
    corpus, out = _corpus(tmp_path / "corpus", 3, seed=9), tmp_path / "out"
    with pytest.raises(ValueError, match="NaN"):
        run(_config(broken, corpus, out))
    assert not (out / "config.json").exists()
    summary = run(_config(model_path, corpus, out))
    assert summary.processed == 3
