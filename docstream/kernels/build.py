"""Lazy, cached building of the compiled WKV extensions with ``torch.utils.cpp_extension.load``.

Nothing is compiled or imported at import time. Each loader builds its extension on first use (ninja,
under torch's extension root, ``~/.cache/torch_extensions/<python>_<accelerator>`` unless
``DOCSTREAM_BUILD_DIR`` or ``TORCH_EXTENSIONS_DIR`` names another) and remembers the result for the rest
of the process: a later call returns the loaded module, or raises the same :class:`BuildError` again
without retrying.

Builds never hang (see :func:`_locked_load`): each extension builds in a folder of its own per install,
Python, torch version and compile flags, under a lock that dies with its holder; a build lock that
torch's ``load`` left behind when a process was killed mid-build is removed, and waiting for another
live process's build gives up after :data:`LOCK_TIMEOUT_S` seconds with a :class:`BuildError`.

Every extension is one entry of :data:`EXTENSIONS` (name, sources, device, defines), built by
:func:`load_spec`; the loaders below name their entry:

* :func:`load_cpu` -- ``wkv4``, ``wkv6``, ``wkv7``, ``linear_rows`` and ``linear_i8`` for CPU tensors (one extension,
  built once per machine: ``-O3 -march=native`` and OpenMP, so the name carries a tag of the CPU).
* :func:`load_cuda` -- ``wkv6`` and ``wkv7`` for CUDA tensors with head size ``N`` baked in at
  compile time (one extension per head size and GPU architecture, both in its name). The head size is
  checked in one place, :func:`check_head_size`, against :data:`MAX_HEAD_SIZE`, which the CUDA
  sources also get (``-DWKV_MAX_N``) for their ``static_assert``.
* :func:`load_cuda_wkv4` -- ``wkv4`` for CUDA tensors.
* :func:`load_cuda_i8` -- ``linear_i8`` (products with int8 weights) for CUDA tensors.
* :func:`load_cpu_train` / :func:`load_cuda_train` -- the RWKV-7 training kernels (a forward that
  saves state checkpoints, and the backward) used by :mod:`docstream.kernels.autograd`: separate
  extensions, so that inference never builds them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parent / "csrc"
#: This install of the package: part of every build folder's name, so two installs never share one.
PACKAGE_DIR = Path(__file__).resolve().parent.parent

#: Seconds a process waits for another process's build of the same extension before giving up.
LOCK_TIMEOUT_S = 900.0
#: docstream's own build lock in each build folder (``flock``: released by the OS when its holder dies).
LOCK_FILE = "docstream-build.lock"
#: torch's build lock in the same folder (``FileBaton`` in ``cpp_extension._jit_compile``): a plain
#: file that stays behind when a process is killed mid-build, and on which every later ``load`` waits.
TORCH_BATON = "lock"

log = logging.getLogger(__name__)

#: Largest head size the CUDA kernels accept (one thread per state row, the row in registers). The one
#: source of truth: the CUDA builds get it as ``-DWKV_MAX_N`` and static_assert against it.
MAX_HEAD_SIZE = 256

CPU_INSTALL_HINT = ("install a C++ compiler (e.g. `apt install g++` / Xcode command line tools) "
                    "and ninja (`pip install ninja`)")


def cuda_install_hint() -> str:
    """What to install for the CUDA kernels, naming the CUDA version torch was built with."""
    try:
        import torch
        version = torch.version.cuda
    except Exception:  # noqa: BLE001 # pragma: no cover - torch is a hard dependency
        version = None
    if version is None:
        return ("install a CUDA build of PyTorch, plus the CUDA toolkit (nvcc) of the same version "
                "and ninja (`pip install ninja`)")
    return (f"install the CUDA toolkit {version} (nvcc matching torch.version.cuda={version}; set CUDA_HOME "
            f"if it is not found), a host C++ compiler and ninja (`pip install ninja`)")


class BuildError(RuntimeError):
    """A compiled WKV extension could not be built or loaded; the message says what to install.

    ``reason`` is a one-line summary (the most telling line of the build output), ``output`` the
    last lines of that output.
    """

    def __init__(self, message: str, reason: str = "", output: str = ""):
        super().__init__(message)
        self.reason = reason or (message.splitlines()[0] if message else "")
        self.output = output


_LOCK = threading.RLock()
_RESULTS: dict[str, ModuleType | BuildError] = {}


def clear_cache() -> None:
    """Forget every loaded extension and every remembered failure (for tests)."""
    with _LOCK:
        _RESULTS.clear()


def _tail(text: str, lines: int = 25) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _reason(exc: Exception) -> str:
    """The most telling line of a build failure: the last one naming an error, else the last one."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    telling = [line for line in lines if not line.startswith("ninja: build stopped")
               and any(word in line.lower() for word in ("error", "not found", "no such file", "required"))]
    line = (telling or lines)[-1]
    return line if len(line) <= 200 else line[:197] + "..."


def _memoized(key: str, build: Callable[[], ModuleType], hint: str) -> ModuleType:
    with _LOCK:
        found = _RESULTS.get(key)
        if found is None:
            log.debug("loading the compiled WKV extension %s", key)
            try:
                found = build()
            except BuildError as exc:  # already says what happened and what to do (a build lock timeout)
                found = exc
            except Exception as exc:  # noqa: BLE001 - ninja missing, compiler missing or failing, nvcc not found, ...
                reason, output = _reason(exc), _tail(str(exc))
                found = BuildError(
                    f"could not build the compiled WKV extension {key!r} ({reason}). To use it, {hint}.\n"
                    f"Last lines of the build output ({type(exc).__name__}):\n{output}", reason, output)
                found.__cause__ = exc
            _RESULTS[key] = found
    if isinstance(found, BuildError):
        raise found
    return found


def _say(message: str) -> None:
    """One line on the terminal (not only the log): builds and waits take long enough to need telling."""
    print(f"docstream: {message}", file=sys.stderr, flush=True)


def _build_root() -> Path:
    """Where build folders go: ``DOCSTREAM_BUILD_DIR``, else ``TORCH_EXTENSIONS_DIR``, else torch's
    default root with its ``py<version>_<accelerator>`` subfolder (as ``cpp_extension.load`` picks)."""
    for var in ("DOCSTREAM_BUILD_DIR", "TORCH_EXTENSIONS_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    import torch
    from torch.utils.cpp_extension import get_default_build_root
    if torch.version.hip is not None:
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def _build_directory(name: str, sources: list[str], flags: list[str]) -> Path:
    """The build folder of extension ``name``: ``<root>/<name>_<hash>``, the hash over this install's
    path, Python, torch version, sources and compile flags. Two installs sharing one folder would
    rebuild each other's extension on every start (torch rebuilds whenever the sources or flags differ
    from the folder's last build), and a torch upgrade must not load a library built for the old one."""
    import torch
    key = "\n".join([str(PACKAGE_DIR), sys.implementation.cache_tag or "", getattr(sys, "abiflags", ""),
                     torch.__version__, str(torch.version.git_version), str(torch.version.cuda),
                     str(torch.version.hip), *sources, *flags])
    return _build_root() / f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; ``False`` if another process holds it."""
    if sys.platform == "win32":  # pragma: no cover - Windows; a byte past the pid, which stays readable
        import msvcrt
        os.lseek(fd, 4096, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> str:
    """The process holding the build lock ``path``, from the pid its holder wrote into it."""
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process (pid not yet written)"


@contextlib.contextmanager
def _build_lock(path: Path, name: str, timeout: float) -> Iterator[None]:
    """Hold docstream's build lock ``path`` (waiting at most ``timeout`` seconds for another process);
    the holder's pid is written into it. The OS releases it when the holder exits or is killed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BuildError(f"cannot open the build lock {path} of the compiled extension {name!r} ({exc}); "
                         "set DOCSTREAM_BUILD_DIR to a writable folder on a local disk") from exc
    try:
        deadline, told = time.monotonic() + timeout, False
        try:
            while not _try_lock(fd):
                holder = _holder(path)
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"gave up after {timeout:g} s waiting for {holder} to finish building the compiled "
                        f"extension {name!r} (build lock {path}). If that process is stuck, end it and "
                        "run again; a lock whose holder has exited is released by itself.",
                        f"timed out waiting for {holder}, which holds the build lock {path}")
                if not told:
                    _say(f"waiting for {holder} to finish building {name} (build lock {path})")
                    told = True
                time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
        except OSError as exc:  # e.g. ENOLCK: a network file system without locks
            raise BuildError(f"cannot lock the build lock {path} of the compiled extension {name!r} ({exc}); "
                             "set DOCSTREAM_BUILD_DIR to a folder on a local disk") from exc
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # no pid of a finished build for a later waiter to name
    finally:
        os.close(fd)  # releases the lock


def _needs_build(name: str, sources: list[str], build_dir: Path) -> bool:
    """Whether ``load`` is about to compile (for the message): the library is missing, or older than a
    source or a header next to one."""
    try:
        built = (build_dir / f"{name}{'.pyd' if sys.platform == 'win32' else '.so'}").stat().st_mtime
    except OSError:
        return True
    return any(p.stat().st_mtime > built for p in _inputs([Path(src) for src in sources]))


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _inputs(sources: list[Path]) -> set[Path]:
    """The sources and the local headers they include, directly or through other headers (what
    ninja rebuilds for; a header no source includes does not make the message appear)."""
    seen: set[Path] = set()
    todo = list(sources)
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo.extend(path.parent / name for name in _INCLUDE.findall(path.read_text(errors="replace")))
    return seen


def _locked_load(name: str, sources: list[str], build_dir: Path, timeout: float | None = None,
                 **load_args) -> ModuleType:
    """``torch.utils.cpp_extension.load`` of ``name`` into ``build_dir`` under docstream's build lock.

    While docstream's lock is held no other docstream process can be building in ``build_dir``, so a
    torch build lock found there was left by a killed build: it is removed (only that file), as
    otherwise ``load`` would wait on it forever. ``timeout`` defaults to :data:`LOCK_TIMEOUT_S`.
    """
    from torch.utils.cpp_extension import load
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create the build folder {build_dir} of the compiled extension {name!r} "
                         f"({exc}); set DOCSTREAM_BUILD_DIR to a writable folder") from exc
    with _build_lock(build_dir / LOCK_FILE, name, LOCK_TIMEOUT_S if timeout is None else timeout):
        baton = build_dir / TORCH_BATON
        if baton.exists():
            log.warning("removing the build lock %s left behind by a killed build", baton)
            baton.unlink(missing_ok=True)
        if _needs_build(name, sources, build_dir):
            _say(f"building the compiled extension {name} (once, into {build_dir}); "
                 "this may take a minute or two")
        return load(name=name, sources=sources, build_directory=str(build_dir), verbose=False, **load_args)


@functools.cache
def _cpu_tag() -> str:
    """A short tag of this CPU (architecture + feature flags): ``-march=native`` builds are not portable."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("flags", "features")):
                    flags = line.split(":", 1)[-1].strip()
                    break
    except OSError:
        pass
    digest = hashlib.sha1(f"{platform.machine()} {platform.processor()} {flags}".encode()).hexdigest()[:8]
    machine = "".join(ch if ch.isalnum() else "_" for ch in platform.machine().lower()) or "cpu"
    return f"{machine}_{digest}"


def cpu_flags() -> tuple[list[str], list[str]]:
    """(compiler flags, linker flags) for the CPU extension on this platform."""
    if sys.platform == "win32":
        return ["/O2", "/openmp", "/fp:contract"], []
    # -fno-trapping-math lets the vectorizer if-convert the branch-free selects of the RWKV-4 loop;
    # -ffp-contract=fast gives FMAs under -std=c++NN (where GCC's default is off)
    cflags = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
    ldflags: list[str] = []
    if sys.platform == "darwin":  # Apple clang ships without OpenMP: serial, but still vectorized
        cflags.append("-fopenmp-simd")
    else:
        cflags += ["-march=native", "-fopenmp", "-Wno-psabi"]
        ldflags.append("-fopenmp")
    return cflags, ldflags


def cuda_flags() -> list[str]:
    """nvcc flags shared by the CUDA extensions (architectures come from torch / TORCH_CUDA_ARCH_LIST)."""
    return ["-O3", "-res-usage", "--extra-device-vectorization", "-Xptxas", "-O3"]


def _cuda_arch_tag() -> str:
    """The GPU architectures the extension is built for (what torch's build picks), for its name:
    ``TORCH_CUDA_ARCH_LIST`` if set, else the visible devices' compute capabilities."""
    import torch
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if arch_list and arch_list != "native":
        return "a" + hashlib.sha1(arch_list.encode()).hexdigest()[:6]
    try:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except Exception:  # noqa: BLE001 - no driver, no device: the name says "smx"
        caps = []
    return "_".join(f"sm{major}{minor}" for major, minor in caps) or "smx"


#: Tokens between two state checkpoints of the RWKV-7 training kernels (compiled into the CUDA one).
TRAIN_CHUNK = 16


@dataclass(frozen=True)
class ExtensionSpec:
    """One compiled extension: its name stem, its sources under ``csrc/``, the device it is built for,
    and the ``-D`` defines it is compiled with. ``per_head_size`` extensions bake the head size in
    (``-DWKV_N=<N>``, and ``-DWKV_MAX_N`` = :data:`MAX_HEAD_SIZE`): one build per head size."""

    prefix: str
    sources: tuple[str, ...]
    device: str  # "cpu" or "cuda"
    defines: tuple[str, ...] = ()
    per_head_size: bool = False
    tag: str = ""  # a part of the name that tells builds with other defines apart

    def name(self, head_size: int | None = None) -> str:
        parts = [self.prefix, f"n{head_size}" if self.per_head_size else "", self.tag,
                 _cpu_tag() if self.device == "cpu" else _cuda_arch_tag()]
        return "_".join(part for part in parts if part)

    def flags(self, head_size: int | None = None) -> list[str]:
        """The ``-D`` flags of the build (the head-size ones included)."""
        sized = [f"-DWKV_N={head_size}", f"-DWKV_MAX_N={MAX_HEAD_SIZE}"] if self.per_head_size else []
        return [*sized, *self.defines]


#: Every compiled extension docstream builds, by the key its loader passes to :func:`load`.
EXTENSIONS: dict[str, ExtensionSpec] = {
    # wkv4, wkv6, wkv7, linear_rows and linear_i8 for CPU tensors (-march=native: the name carries a CPU tag)
    "cpu": ExtensionSpec("docstream_wkv_cpu", ("wkv_cpu.cpp", "linear_rows.cpp", "linear_i8.cpp"), "cpu"),
    # the same without the GCC/Clang vector types: what other compilers build (for the tests)
    "cpu_scalar": ExtensionSpec("docstream_wkv_cpu", ("wkv_cpu.cpp", "linear_rows.cpp", "linear_i8.cpp"), "cpu",
                                ("-DWKV_SCALAR",), tag="scalar"),
    # the RWKV-7 training kernels: separate, so that inference never builds them
    "cpu_train": ExtensionSpec("docstream_wkv7_train_cpu", ("wkv7_train_cpu.cpp",), "cpu"),
    "cuda": ExtensionSpec("docstream_wkv_cuda", ("wkv_cuda.cpp", "wkv_cuda.cu"), "cuda", per_head_size=True),
    "cuda_wkv4": ExtensionSpec("docstream_wkv4_cuda", ("wkv4_cuda.cpp", "wkv4_cuda.cu"), "cuda"),
    "cuda_i8": ExtensionSpec("docstream_linear_i8_cuda", ("linear_i8_cuda.cpp", "linear_i8_cuda.cu"), "cuda"),
    "cuda_train": ExtensionSpec("docstream_wkv7_train_cuda", ("wkv7_train_cuda.cpp", "wkv7_train_cuda.cu"),
                                "cuda", (f"-DWKV_CHUNK={TRAIN_CHUNK}",), per_head_size=True,
                                tag=f"k{TRAIN_CHUNK}"),
}


def check_head_size(head_size: int) -> int:
    """``head_size`` if the CUDA kernels support it (1..:data:`MAX_HEAD_SIZE`), else ``ValueError``."""
    if not cuda_supports(head_size):
        raise ValueError(f"the CUDA WKV kernels support head sizes 1..{MAX_HEAD_SIZE} (one thread per state "
                         f"row), got N={head_size}; use backend='torch' for larger heads")
    return head_size


def cuda_supports(head_size: int) -> bool:
    """Whether the CUDA kernels can be built for ``head_size``."""
    return 1 <= head_size <= MAX_HEAD_SIZE


def load_spec(spec: ExtensionSpec, head_size: int | None = None) -> ModuleType:
    """The extension ``spec`` (for ``head_size`` if it is built per head size), built on first call and
    remembered for the rest of the process."""
    if spec.per_head_size:
        check_head_size(head_size)
    name = spec.name(head_size)
    defines = spec.flags(head_size)
    sources = [str(CSRC / src) for src in spec.sources]

    if spec.device == "cpu":
        def build() -> ModuleType:
            cflags, ldflags = cpu_flags()
            cflags = [*cflags, *defines]
            return _locked_load(name, sources, _build_directory(name, sources, [*cflags, "|", *ldflags]),
                                extra_cflags=cflags, extra_ldflags=ldflags)

        return _memoized(name, build, CPU_INSTALL_HINT)

    def build() -> ModuleType:
        import torch
        if torch.version.cuda is None:
            raise RuntimeError(f"this PyTorch ({torch.__version__}) was built without CUDA")
        cflags, cuda_cflags = ["-O3", *defines], [*cuda_flags(), *defines]
        return _locked_load(name, sources, _build_directory(name, sources, [*cflags, "|", *cuda_cflags]),
                            extra_cflags=cflags, extra_cuda_cflags=cuda_cflags)

    return _memoized(name, build, cuda_install_hint())


def load(key: str, head_size: int | None = None) -> ModuleType:
    """The extension ``EXTENSIONS[key]``; see :func:`load_spec`."""
    return load_spec(EXTENSIONS[key], head_size)


def load_cpu() -> ModuleType:
    """The CPU extension (``wkv4``, ``wkv6``, ``wkv7``, ``linear_rows``, ``linear_i8`` on fp32 tensors)."""
    return load("cpu")


def load_cpu_train() -> ModuleType:
    """The CPU RWKV-7 training extension (``wkv7_forward_train``, ``wkv7_backward``; fp32 and fp64)."""
    return load("cpu_train")


def load_cuda(head_size: int) -> ModuleType:
    """The CUDA extension for RWKV-5.2/6/7 (``wkv6``, ``wkv7``) with head size ``head_size``."""
    return load("cuda", head_size)


def load_cuda_wkv4() -> ModuleType:
    """The CUDA extension for RWKV-4 (``wkv4``)."""
    return load("cuda_wkv4")


def load_cuda_i8() -> ModuleType:
    """The CUDA extension for products with int8 weights (``linear_i8``)."""
    return load("cuda_i8")


def load_cuda_train(head_size: int) -> ModuleType:
    """The CUDA RWKV-7 training extension (``wkv7_forward_train``, ``wkv7_backward``) for head size
    ``head_size``, checkpointing every :data:`TRAIN_CHUNK` tokens."""
    return load("cuda_train", head_size)
