"""The background writer under faults: a process killed while commits wait in its queue, or while one
is half written, loses nothing committed, and the resumed run equals an uninterrupted one; a failed
write stops the writer and reaches the caller."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docstream.files import DiskFullError
from docstream.store.run_store import RunStore
from docstream.stream.run import run
from tests.helpers import ROOT, nested_corpus, run_config
from tests.stream.tables import assert_same_outputs, sorted_tables

#: a run whose writer is held at a chosen point: it touches MARKER there and waits to be killed
HELD_RUN = r"""
import json, sys, time
from pathlib import Path
import docstream.store.run_store as run_store
import docstream.stream.committer as committer
from docstream.store.config import build_config
from docstream.stream.run import run

mode, marker, settings = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])

def hold(what):
    marker.write_text(what)
    time.sleep(600)

if mode == "queued":  # the writer stops before its 2nd commit; the engine fills the queue behind it
    write, submit = committer.PendingCommit.write, committer.Committer.submit
    seen = {}
    def slow_write(self, store, *parts):
        if self.seq == 2:
            # held here; the marker says so once the queue behind is full (the engine may have filled it
            # before this thread got here, and then waits in submit: so the held thread itself watches)
            while not (seen and seen["committer"]._queue.full()):
                time.sleep(0.01)
            marker.write_text(f"queued up to commit {seen['seq']}")
            time.sleep(600)
        write(self, store, *parts)
    def watched_submit(self, commit):
        seen["committer"] = self
        submit(self, commit)
        seen["seq"] = commit.seq
    committer.PendingCommit.write, committer.Committer.submit = slow_write, watched_submit
else:  # "record" / "latest": commit 2's parts are durable, then the writer stops before that file
    name = {"record": "00000002.json", "latest": "LATEST"}[mode]
    atomic_write_bytes = run_store.atomic_write_bytes
    def gated(path, data, **options):
        if Path(path).name == name and (mode == "record" or data == b"2\n"):
            hold(f"before {name}")
        atomic_write_bytes(path, data, **options)
    run_store.atomic_write_bytes = gated
run(build_config(None, settings))
"""


def _settings(model_path: Path, corpus: Path, out: Path) -> dict:
    config = run_config(model_path, corpus, out, commit_every=3)
    return json.loads(config.model_dump_json())


def _killed_at(mode: str, model_path: Path, corpus: Path, out: Path, tmp_path: Path) -> str:
    marker = tmp_path / f"marker-{mode}"
    proc = subprocess.Popen([sys.executable, "-c", HELD_RUN, mode, str(marker),
                             json.dumps(_settings(model_path, corpus, out))],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the held run ended before its writer was held: {proc.stderr.read().decode()[-2000:]}")
    what = marker.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return what


@pytest.fixture(scope="module")
def reference(model_path, tmp_path_factory):
    """A corpus and the tables of its uninterrupted run (commits every 3 chunks: several commits)."""
    root = tmp_path_factory.mktemp("writer-faults")
    corpus = nested_corpus(root / "corpus", 8, seed=5, max_words=700)
    return corpus, sorted_tables(_run(model_path, corpus, root / "ref"))


@pytest.mark.parametrize("mode", ["queued", "record", "latest"])
def test_a_kill_with_commits_queued_or_half_written_loses_nothing(model_path, tmp_path, mode, reference):
    corpus, reference = reference
    out = tmp_path / "killed"
    what = _killed_at(mode, model_path, corpus, out, tmp_path)
    records = sorted(p.name for p in (out / "commits").glob("*.json"))
    if mode == "queued":
        assert what.startswith("queued up to commit"), what
        # commit 1 is durable; the held 2nd and every queued one after it never reached the disk
        assert records == ["00000001.json"]
        assert not list((out / "snapshots").glob("part-00000002.parquet"))
    else:
        assert list((out / "embeddings").glob("part-00000002.parquet")), "commit 2's parts were written"
        assert records == (["00000001.json"] if mode == "record" else ["00000001.json", "00000002.json"])
    progress = RunStore(out).progress()  # what was committed reads back whole
    assert progress.last_seq == len(records)
    _run(model_path, corpus, out)
    assert_same_outputs(sorted_tables(out), reference)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_a_failed_write_stops_the_writer_and_reaches_the_run(model_path, tmp_path, monkeypatch, reference):
    corpus, reference = reference
    out = tmp_path / "out"
    store_commit = RunStore.commit

    def fails_at_3(self, seq, *args, **kwargs):
        if seq == 3:
            raise DiskFullError(28, f"no space left on the device writing {self.out} (test)")
        return store_commit(self, seq, *args, **kwargs)

    monkeypatch.setattr(RunStore, "commit", fails_at_3)
    with pytest.raises(DiskFullError):
        _run(model_path, corpus, out)
    # nothing after the failed commit was written: the records stop at 2 with no gap
    assert sorted(p.name for p in (out / "commits").glob("*.json")) == ["00000001.json", "00000002.json"]
    assert RunStore(out).progress().last_seq == 2
    monkeypatch.setattr(RunStore, "commit", store_commit)
    _run(model_path, corpus, out)
    assert_same_outputs(sorted_tables(out), reference)


def _run(model_path: Path, corpus: Path, out: Path) -> Path:
    run(run_config(model_path, corpus, out, commit_every=3))
    return out
