"""The command line as the README shows it: demo, selftest, info."""
import subprocess
import sys
from pathlib import Path

from docstream.testing.checkpoints import save_random_checkpoint
from docstream.stream import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "docstream.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_demo_streams_the_sample_corpus_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = _cli("demo", "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    assert "documents processed 9" in first.stdout
    assert "summary of plays/the-tempest.txt" in first.stdout and "search" in first.stdout
    store = RunStore(out)
    assert store.read_table("documents").num_rows == 9
    assert store.read_table("embeddings").num_rows > 6
    from docstream.demo import SEARCH_QUERY
    from docstream.tasks.search import search

    # the demo's query ("a ghost walks on the castle platform at midnight") finds Hamlet first
    top = search(out, SEARCH_QUERY, k=3)[0]
    assert top.doc_id == "plays/hamlet.txt" and top.retrievers["lexical"] == 1
    again = _cli("demo", "--out", str(out), "--quiet")
    assert again.returncode == 0 and "already done 9" in again.stdout


def test_selftest_reports_agreement():
    result = _cli("selftest", "--versions", "4,7", "--tokens", "64")
    assert result.returncode == 0, result.stderr
    assert "all streaming paths agree" in result.stdout


def test_info_describes_a_checkpoint_and_errors_are_clean(tmp_path):
    path = save_random_checkpoint(tmp_path / "m.pth", "6", n_layer=2, n_embd=64, head_size=16, vocab_size=100)
    info = _cli("info", "--model", str(path))
    assert info.returncode == 0 and "RWKV-6" in info.stdout and "heads      4 x 16" in info.stdout
    missing = _cli("info", "--model", str(tmp_path / "absent.pth"))
    assert missing.returncode == 2 and "absent.pth" in missing.stderr and "Traceback" not in missing.stderr


def test_run_and_info_use_the_built_in_model_when_none_is_given(tmp_path):
    from docstream.defaults import default_model_path, default_tokenizer_path
    from docstream.store.reader import run_settings

    notes = ROOT / "docstream" / "data" / "sample_corpus" / "notes"
    result = _cli("run", "--input", str(notes), "--out", str(tmp_path / "out"), "--quiet", "--no-index")
    assert result.returncode == 0, result.stderr
    settings = run_settings(tmp_path / "out")
    assert settings.model == default_model_path() and settings.tokenizer == default_tokenizer_path()
    assert RunStore(tmp_path / "out").read_table("documents").num_rows == 2
    info = _cli("info")
    assert info.returncode == 0 and "RWKV-7" in info.stdout and "vocabulary 4096" in info.stdout
    lone = _cli("probe", "--model", str(default_model_path()), "--lengths", "64", "--quiet")
    assert lone.returncode == 2 and "needs its tokenizer" in lone.stderr


def test_errors_map_to_exit_codes_without_tracebacks():
    import errno

    from docstream.cli import exit_code
    from docstream.files import DiskFullError
    from docstream.kernels.build import BuildError
    from docstream.store.run_store import RunLockedError, StoreDamagedError
    from docstream.stream.ray_engine import RayUnavailableError, WorkerFailedError
    from docstream.train.loop import TrainingLockedError

    assert exit_code(ValueError("bad value")) == 2
    assert exit_code(StoreDamagedError("damaged")) == 2
    assert exit_code(FileNotFoundError("gone")) == 2
    assert exit_code(RunLockedError("locked")) == 3
    assert exit_code(TrainingLockedError("locked")) == 3
    assert exit_code(DiskFullError(errno.ENOSPC, "full")) == 5
    assert exit_code(BuildError("no compiler")) == 6
    assert exit_code(RayUnavailableError("pip install docstream[ray]")) == 2
    assert exit_code(WorkerFailedError("workers kept dying")) == 4
    assert exit_code(ImportError("a bug")) is None
    assert exit_code(RuntimeError("a bug")) is None and exit_code(OSError(errno.EIO, "io")) is None
