"""docstream train under faults: a process SIGKILLed at any write of its final save leaves a directory
that the next run finishes into the uninterrupted result, a finished directory missing its exports gets
them back, and temporary files of killed runs are removed while everything else is kept."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from docstream.files import try_lock
from docstream.model import load_model
from docstream.train.loop import TrainingLockedError, train
from tests.train.test_train import corpus, curve, tiny, uninterrupted  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]

#: trains as the JSON settings in argv[1] say and SIGKILLs itself at the argv[4]-th atomic replace onto
#: the file named argv[2], just "before" or "after" it (argv[3]); exits 3 if that write never comes
KILL_AT_WRITE = """
import json, os, signal, sys
from pathlib import Path
from docstream.train.config import TrainConfig
from docstream.train.loop import train

settings, name, when, nth = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
real_replace, seen = os.replace, []

def replace(src, dst):
    hit = Path(dst).name == name and len(seen) + 1 == nth
    if Path(dst).name == name:
        seen.append(dst)
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if hit and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
train(TrainConfig(**settings))
sys.exit(3)
"""


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _same_model(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if "tmp" in p.name)


# max_steps 6 with save_every 3: the second save of each file is the final one
@pytest.mark.parametrize("name,when", [("train_state.pt", "after"), ("train_state.pt", "before"),
                                       ("model.pth", "after"), ("log.jsonl", "after")])
def test_sigkill_during_the_final_save_then_rerun_leaves_the_uninterrupted_model_and_log(
        corpus, tmp_path, uninterrupted, name, when):  # noqa: F811
    whole, _ = uninterrupted
    out = tmp_path / "killed"
    settings = json.dumps(tiny(corpus, out).model_dump(mode="json"))
    child = subprocess.Popen([sys.executable, "-c", KILL_AT_WRITE, settings, name, when, "2"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, err
    if when == "before":  # the whole new file sat under its temporary name
        assert _temp_files(out) == [f".{name}.tmp-{child.pid}"]
    result = train(tiny(corpus, out))
    assert result.steps == 6 and result.model_path == out / "model.pth"
    assert _same_model(out / "model.pth", whole / "model.pth")
    assert load_model(out / "model.pth").version == "7"
    assert curve(_log(out)) == curve(_log(whole))
    assert _temp_files(out) == []


def test_a_finished_directory_gets_missing_or_stale_exports_back(corpus, tmp_path, uninterrupted):  # noqa: F811
    whole, _ = uninterrupted
    out = tmp_path / "copy"
    shutil.copytree(whole, out)
    (out / "model.pth").unlink()
    lines = (out / "log.jsonl").read_text().splitlines(keepends=True)
    (out / "log.jsonl").write_text("".join(lines[:3]))  # the log of the checkpoint before the last
    result = train(tiny(corpus, out))
    assert result.steps == 6
    assert _same_model(out / "model.pth", whole / "model.pth")
    assert (out / "log.jsonl").read_bytes() == (whole / "log.jsonl").read_bytes()

    (out / "model.pth").write_bytes(b"not a checkpoint")
    train(tiny(corpus, out))
    assert _same_model(out / "model.pth", whole / "model.pth")

    before = {n: (out / n).stat().st_mtime_ns for n in ("model.pth", "log.jsonl")}
    train(tiny(corpus, out))  # intact exports are left as they are
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before


def test_temp_files_of_killed_runs_are_removed_under_the_lock_and_nothing_else(corpus, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    ours = [".train_state.pt.tmp-123", ".model.pth.tmp-4", ".log.jsonl.tmp-99999", ".settings.json.tmp-7",
            "train_tokens.tmp.npy", "tokenizer.json.tmp"]
    others = ["notes.txt", ".model.pth.tmp-abc", ".other.pt.tmp-12", "model.pth.tmp-5", ".log.jsonl.tmp-12.bak",
              ".train_state.pt.tmp-", "tokenizer.json.tmp.old"]
    for name in ours + others:
        (out / name).write_bytes(b"x")
    (out / ".train_state.pt.tmp-55").mkdir()  # a directory is no file docstream wrote

    held = try_lock(out / ".lock")
    assert held is not None
    try:  # while another process trains here its temp files may be live: none is touched
        with pytest.raises(TrainingLockedError):
            train(tiny(corpus, out, max_steps=2, eval_every=2, save_every=2))
        assert all((out / name).exists() for name in ours)
    finally:
        os.close(held)

    result = train(tiny(corpus, out, max_steps=2, eval_every=2, save_every=2))
    assert result.steps == 2
    assert not any((out / name).exists() for name in ours)
    assert all((out / name).read_bytes() == b"x" for name in others)
    assert (out / ".train_state.pt.tmp-55").is_dir()
    assert (out / "model.pth").is_file() and len(_log(out)) == 2
