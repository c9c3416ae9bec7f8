"""Kernel builds under faults: a build killed midway, a stale torch build lock, a stuck builder, and two
installs sharing one cache must never make a later build hang or rebuild needlessly.

The builds here compile a tiny Python extension (a few lines of C++, seconds) through the same path as
the WKV kernels (``build.load_spec`` of a CPU ``ExtensionSpec``, ``build.CSRC`` pointed at it). Every load that could
hang runs in a subprocess with a timeout, so a regression fails instead of hanging the suite.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from docstream.kernels import build

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")

TINY = r"""
#include <Python.h>
#define DS_CAT(a, b) a##b
#define DS_XCAT(a, b) DS_CAT(a, b)
#define DS_STR(a) #a
#define DS_XSTR(a) DS_STR(a)
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static PyModuleDef module = {PyModuleDef_HEAD_INIT, DS_XSTR(TORCH_EXTENSION_NAME), nullptr, -1, methods};
PyMODINIT_FUNC DS_XCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module); }
"""

# what `docstream run` does on first use of a kernel, for the tiny extension in argv[1]
LOAD = ("import sys; from pathlib import Path; from docstream.kernels import build; build.CSRC = Path(sys.argv[1]); "
        "print(build.load_spec(build.ExtensionSpec('docstream_tiny', ('tiny.cpp',), 'cpu')).answer())")
BUILDING = "building the compiled extension docstream_tiny"


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """(source folder, build root): the tiny extension's source, and DOCSTREAM_BUILD_DIR for it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "tiny.cpp").write_text(TINY)
    root = tmp_path / "build"
    monkeypatch.setenv("DOCSTREAM_BUILD_DIR", str(root))
    return src, root


def load_in_subprocess(src: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", LOAD, str(src)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **env})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the extension load hung (no result in {timeout} s): {exc.stderr!r}")


def only_folder(root: Path) -> Path:
    folders = sorted(root.glob("docstream_tiny_*"))
    assert len(folders) == 1, folders
    return folders[0]


def test_stale_torch_lock_does_not_hang_and_build_is_announced_once(tiny):
    src, root = tiny
    first = load_in_subprocess(src)
    assert first.returncode == 0 and first.stdout.strip() == "42", first.stderr
    assert first.stderr.count(BUILDING) == 1, first.stderr  # one line on the terminal, naming the extension
    folder = only_folder(root)
    (folder / build.TORCH_BATON).write_text("")  # what a build killed inside torch's load leaves behind

    second = load_in_subprocess(src, timeout=60)
    assert second.returncode == 0 and second.stdout.strip() == "42", second.stderr
    assert BUILDING not in second.stderr  # a cache hit says nothing
    assert not (folder / build.TORCH_BATON).exists()
    assert (folder / build.LOCK_FILE).exists() and (folder / "build.ninja").exists()  # nothing else removed


def test_build_killed_midway_leaves_nothing_that_blocks(tiny, tmp_path):
    """SIGKILL a first load while the compiler runs (a wrapper that waits there), then load again."""
    src, root = tiny
    marker = tmp_path / "compiling"
    slow = tmp_path / "slow-c++"  # "c++" in the name: torch accepts it as a compiler
    slow.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        for arg in "$@"; do [ "$arg" = "-c" ] && touch {marker} && sleep 60; done
        exec c++ "$@"
        """))
    slow.chmod(0o755)
    victim = subprocess.Popen([sys.executable, "-c", LOAD, str(src)], env={**os.environ, "CXX": str(slow)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the first build never reached the compiler"
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # the process and its ninja / compiler children
        victim.wait()
    folder = only_folder(root)
    assert (folder / build.TORCH_BATON).exists()  # the fault: torch's lock outlives its killed holder
    assert (folder / build.LOCK_FILE).read_text().strip() == str(victim.pid)

    again = load_in_subprocess(src, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "42", again.stderr
    assert BUILDING in again.stderr  # the killed build never finished: this one builds
    assert not (folder / build.TORCH_BATON).exists()


HOLD = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
        "print('held', flush=True); time.sleep(120)")


def test_waiting_for_a_stuck_builder_times_out_naming_the_lock(tmp_path, capsys):
    (tmp_path / "tiny.cpp").write_text(TINY)
    sources, folder = [str(tmp_path / "tiny.cpp")], tmp_path / "docstream_tiny_wait"
    folder.mkdir()
    lock = folder / build.LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(build.BuildError) as info:
            build._locked_load("docstream_tiny_wait", sources, folder, timeout=1.0)
        assert 1.0 <= time.monotonic() - start < 10
        message = str(info.value)
        assert str(lock) in message and f"process {holder.pid}" in message and "docstream_tiny_wait" in message
        assert f"waiting for process {holder.pid}" in capsys.readouterr().err  # said while waiting
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder: the same load now goes through without waiting
    assert build._locked_load("docstream_tiny_wait", sources, folder, timeout=1.0).answer() == 42
    assert "waiting for" not in capsys.readouterr().err
    assert lock.read_text() == ""  # released: no pid of a finished build left to name


def test_memoized_keeps_a_build_error_as_it_is():
    """A lock timeout is not reported as a missing compiler."""
    key = "docstream_test_lock_timeout"

    def timed_out():
        raise build.BuildError("gave up after 1 s waiting for process 7 (build lock /x/lock)", "held")

    try:
        with pytest.raises(build.BuildError, match="^gave up after 1 s") as info:
            build._memoized(key, timed_out, build.CPU_INSTALL_HINT)
        assert "C++ compiler" not in str(info.value)
    finally:
        build._RESULTS.pop(key, None)


def test_build_folder_per_install_torch_and_flags(monkeypatch, tmp_path):
    monkeypatch.delenv("DOCSTREAM_BUILD_DIR", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_ext"))

    def folder(install: str, flags=("-O3",)) -> Path:
        monkeypatch.setattr(build, "PACKAGE_DIR", Path(install))
        return build._build_directory("docstream_x", [f"{install}/docstream/kernels/csrc/x.cpp"], list(flags))

    a, b = folder("/clone_a"), folder("/clone_b")
    assert a != b and a.parent == b.parent == tmp_path / "torch_ext"
    assert a.name.startswith("docstream_x_") and folder("/clone_a") == a  # stable across processes
    assert folder("/clone_a", ("-O2",)) != a
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert folder("/clone_a") != a

    monkeypatch.setenv("DOCSTREAM_BUILD_DIR", str(tmp_path / "ours"))  # wins over TORCH_EXTENSIONS_DIR
    assert folder("/clone_a").parent == tmp_path / "ours"
    monkeypatch.delenv("DOCSTREAM_BUILD_DIR")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    from torch.utils.cpp_extension import get_default_build_root
    assert folder("/clone_a").parent.parent == Path(get_default_build_root())


def test_extension_table():
    """Every extension's sources exist; names and defines tell apart what is built differently."""
    for key, spec in build.EXTENSIONS.items():
        assert spec.device in ("cpu", "cuda"), key
        for src in spec.sources:
            assert (build.CSRC / src).is_file(), f"{key}: {src}"
    cuda, train = build.EXTENSIONS["cuda"], build.EXTENSIONS["cuda_train"]
    assert cuda.name(64).startswith("docstream_wkv_cuda_n64_")
    assert train.name(64).startswith(f"docstream_wkv7_train_cuda_n64_k{build.TRAIN_CHUNK}_")
    assert f"-DWKV_CHUNK={build.TRAIN_CHUNK}" in train.flags(64)
    names = {spec.name(64) for spec in build.EXTENSIONS.values()}
    assert len(names) == len(build.EXTENSIONS)  # e.g. the scalar CPU build never shares the vector one's name
    assert build.EXTENSIONS["cpu_scalar"].flags() == ["-DWKV_SCALAR"] and build.EXTENSIONS["cpu"].flags() == []


def test_the_build_message_follows_what_the_sources_include(tmp_path):
    """Only a source or a header it includes (directly or through another header) being newer than the
    library means a compile; a newer header that no source includes does not."""
    import os

    from docstream.kernels.build import _needs_build

    src, build = tmp_path / "src", tmp_path / "build"
    src.mkdir(), build.mkdir()
    (src / "k.cpp").write_text('#include "a.h"\nint f() { return 1; }\n')
    (src / "a.h").write_text('#include "b.h"\n')
    (src / "b.h").write_text("// leaf\n")
    (src / "other.cuh").write_text("// used by another extension\n")
    library = build / f"ext{'.pyd' if os.name == 'nt' else '.so'}"
    library.write_bytes(b"")
    os.utime(library, (1_000, 1_000))
    for name in ("k.cpp", "a.h", "b.h"):
        os.utime(src / name, (500, 500))
    os.utime(src / "other.cuh", (2_000, 2_000))
    assert not _needs_build("ext", [str(src / "k.cpp")], build)
    os.utime(src / "b.h", (2_000, 2_000))  # included through a.h
    assert _needs_build("ext", [str(src / "k.cpp")], build)
    library.unlink()
    assert _needs_build("ext", [str(src / "k.cpp")], build)
