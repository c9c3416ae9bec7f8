"""The Ray engine: outputs equal the local engine's after a worker is killed mid-run, and after the
driver is killed and the run resumed. Runs on a two-worker local Ray cluster on 127.0.0.1."""
from __future__ import annotations

import ipaddress
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from docstream import cli
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.store.config import build_config
from docstream.store.run_store import RunStore
from docstream.stream.ray_engine import (
    RayEngine,
    RayUnavailableError,
    WorkerFailedError,
    stream_on_ray,
)
from docstream.stream.run import _Recorder, run
from docstream.tokenizer import default_world_vocab_path
from tests.stream.tables import assert_same_outputs
from tests.stream.tables import sorted_tables as _tables

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("river", "stone", "light", "quiet", "morning", "paper", "signal", "garden", "winter", "engine", "memory",
         "the", "a", "of", "and", "to", "in")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The local reference runs fastest on one thread, leaving the other core to the Ray workers
    (which Ray gives one thread each); results agree across thread counts to float32 rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with two CPUs (so two worker processes), on loopback only; its address."""
    with pytest.MonkeyPatch.context() as mp:
        # read by Ray when first imported: without it Ray advertises the machine's outward address
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray = pytest.importorskip("ray")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        try:
            address = ray.get_runtime_context().gcs_address
            assert ipaddress.ip_address(address.rsplit(":", 1)[0]).is_loopback, address
            yield address
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("model") / "tiny7.pth", "7", n_layer=2, n_embd=32,
                                  head_size=16, vocab_size=65536, seed=3,
                                  lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16})


def _corpus(root: Path, n_docs: int, seed: int) -> Path:
    rng = random.Random(seed)
    root.mkdir()
    for i in range(n_docs):
        (root / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 500))))
    (root / "empty.txt").write_text("")  # a rejection, recorded by whichever engine
    return root


def _config(model_path, corpus, out, **kw):
    settings = {"model": model_path, "tokenizer": default_world_vocab_path(), "input": corpus, "out": out,
                "chunk_len": 16, "batch_size": 2, "snapshot_every": 2, "commit_every": 3, "backend": "torch",
                "quiet": True}
    return build_config(None, {**settings, **kw})


@pytest.fixture(scope="module")
def local_run(model_path, tmp_path_factory):
    """A corpus and the tables the local engine writes for it."""
    root = tmp_path_factory.mktemp("local")
    corpus = _corpus(root / "corpus", 10, seed=1)
    summary = run(_config(model_path, corpus, root / "out"))
    assert summary.processed == 10 and summary.rejected["empty"] == 1
    return corpus, _tables(root / "out")


def test_a_killed_worker_is_replaced_and_outputs_equal_the_local_engine(ray_cluster, model_path, local_run,
                                                                       tmp_path, monkeypatch):
    corpus, reference = local_run
    packets, killed, taken_over = {0: 0, 1: 0}, [], []
    on_packet, worker_lost = RayEngine._on_packet, _Recorder.worker_lost

    def kill_worker_0_at_its_third_packet(self, worker, group, packet):
        on_packet(self, worker, group, packet)
        packets[worker.slot] += 1
        if worker.slot == 0 and packets[0] == 3 and not killed:
            os.kill(worker.info.pid, signal.SIGKILL)
            killed.append(worker.info.pid)

    def record_takeover(self, docs):
        tasks = worker_lost(self, docs)
        taken_over.extend(tasks)
        return tasks

    monkeypatch.setattr(RayEngine, "_on_packet", kill_worker_0_at_its_third_packet)
    monkeypatch.setattr(_Recorder, "worker_lost", record_takeover)
    summary = run(_config(model_path, corpus, tmp_path / "ray", engine="ray", workers=2))
    assert killed and summary.worker_restarts == 1
    assert packets[1] > 0, "both workers should have streamed documents"
    assert any(task.start_token > 0 for task in taken_over), "a document should go on from a committed snapshot"
    # every row exactly once; vectors and states to float32 rounding (other batch companions than locally)
    assert_same_outputs(_tables(tmp_path / "ray"), reference)


def test_a_killed_driver_resumes_to_the_local_engine_outputs(ray_cluster, model_path, local_run, tmp_path):
    corpus, reference = local_run
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "docstream.cli", "run", "--model", str(model_path),
           "--tokenizer", str(default_world_vocab_path()), "--input", str(corpus), "--out", str(out),
           "--chunk-len", "16", "--batch-size", "2", "--snapshot-every", "2", "--commit-every", "3",
           "--backend", "torch", "--engine", "ray", "--address", ray_cluster, "--workers", "2",
           "--quiet", "--no-index"]
    with open(tmp_path / "driver.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # generous: a starved CI box starts Ray workers slowly
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list((out / "commits").glob("*.json"))) >= 4:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
    committed = RunStore(out).progress()
    assert committed.last_seq >= 4, f"the driver committed nothing in 300 s: {(tmp_path / 'driver.log').read_text()}"
    summary = run(_config(model_path, corpus, out, engine="ray", workers=2))
    assert summary.skipped == len(committed.finished) and summary.resumed == len(committed.in_flight) > 0
    assert_same_outputs(_tables(out), reference)


def test_workers_that_cannot_start_or_fit_fail_the_run_clearly(ray_cluster, model_path, local_run, tmp_path):
    corpus, _ = local_run
    with pytest.raises(ValueError, match=r"cannot hold 3 workers, which need 3 CPUs \(it has 2\)"):
        run(_config(model_path, corpus, tmp_path / "big", engine="ray", workers=3))
    # a worker that reads another model file than the driver fingerprinted refuses to start
    config = _config(model_path, corpus, tmp_path / "out", engine="ray", workers=1)
    with pytest.raises(WorkerFailedError, match="model checkpoint .* differs from the driver's"):
        stream_on_ray(config, [], sink=None, model_fingerprint="0" * 64, tokenizer_fingerprint="")


def test_engine_ray_without_ray_says_what_to_install(model_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    corpus = _corpus(tmp_path / "corpus", 1, seed=3)
    with pytest.raises(RayUnavailableError, match=r"pip install docstream\[ray\]"):
        run(_config(model_path, corpus, tmp_path / "out", engine="ray"))
    code = cli.main(["run", "--model", str(model_path), "--tokenizer", str(default_world_vocab_path()),
                     "--input", str(corpus), "--out", str(tmp_path / "out"), "--engine", "ray", "--quiet"])
    assert code == 2 and "pip install docstream[ray]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ray_settings_are_validated(model_path, tmp_path):
    with pytest.raises(ValueError, match="workers=3 only apply to engine 'ray'"):
        _config(model_path, tmp_path, tmp_path / "out", workers=3)
    with pytest.raises(ValueError, match="pass device 'cuda'"):
        _config(model_path, tmp_path, tmp_path / "out", engine="ray", device="cuda:1")
    with pytest.raises(ValueError, match="workers"):
        _config(model_path, tmp_path, tmp_path / "out", engine="ray", workers=0)
    assert _config(model_path, tmp_path, tmp_path / "out", engine="ray").ray_workers == 2
