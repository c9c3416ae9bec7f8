"""Lazy, cached building of the compiled WKV extensions with ``torch.utils.cpp_extension.load``.

Nothing is compiled or imported at import time. Each loader builds its extension on first use (ninja,
into torch's extension cache, ``~/.cache/torch_extensions`` unless ``TORCH_EXTENSIONS_DIR`` or
``DOCSTREAM_BUILD_DIR`` says otherwise) and remembers the result for the rest of the process: a later
call returns the loaded module, or raises the same :class:`BuildError` again without retrying.

* :func:`load_cpu` -- ``wkv4``, ``wkv6`` and ``wkv7`` for CPU tensors (one extension, built once per
  machine: ``-O3 -march=native`` and OpenMP, so the name carries a tag of the CPU it was built for).
* :func:`load_cuda` -- ``wkv6`` and ``wkv7`` for CUDA tensors with head size ``N`` baked in at
  compile time (one extension per head size and GPU architecture, both in its name).
* :func:`load_cuda_wkv4` -- ``wkv4`` for CUDA tensors.
* :func:`load_cpu_train` / :func:`load_cuda_train` -- the RWKV-7 training kernels (a forward that
  saves state checkpoints, and the backward) used by :mod:`docstream.kernels.autograd`: separate
  extensions, so that inference never builds them.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parent / "csrc"

log = logging.getLogger(__name__)

#: Largest head size the CUDA kernels accept (one thread per state row, the row in registers).
CUDA_MAX_HEAD_SIZE = 256

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
            log.info("loading the compiled WKV extension %s (the first build on a machine takes a minute or two)",
                     key)
            try:
                found = build()
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


def _build_directory(name: str) -> str | None:
    root = os.environ.get("DOCSTREAM_BUILD_DIR")
    if not root:
        return None  # torch's own cache (TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions)
    path = Path(root).expanduser() / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


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


def load_cpu() -> ModuleType:
    """The CPU extension (``wkv4``, ``wkv6``, ``wkv7`` on fp32 tensors); built on first call."""
    return _load_cpu_extension("docstream_wkv_cpu", "wkv_cpu.cpp")


def load_cpu_train() -> ModuleType:
    """The CPU RWKV-7 training extension (``wkv7_forward_train``, ``wkv7_backward``; fp32 and fp64)."""
    return _load_cpu_extension("docstream_wkv7_train_cpu", "wkv7_train_cpu.cpp")


def _load_cpu_extension(prefix: str, source: str) -> ModuleType:
    """The CPU extension built from ``csrc/<source>`` with :func:`cpu_flags`, once per process."""
    name = f"{prefix}_{_cpu_tag()}"

    def build() -> ModuleType:
        from torch.utils.cpp_extension import load
        cflags, ldflags = cpu_flags()
        return load(name=name, sources=[str(CSRC / source)], extra_cflags=cflags,
                    extra_ldflags=ldflags, build_directory=_build_directory(name), verbose=False)

    return _memoized(name, build, CPU_INSTALL_HINT)


def cuda_flags() -> list[str]:
    """nvcc flags shared by the CUDA extensions (architectures come from torch / TORCH_CUDA_ARCH_LIST)."""
    return ["-O3", "-res-usage", "--extra-device-vectorization", "-Xptxas", "-O3"]


def _load_cuda_extension(name: str, sources: list[str], defines: list[str]) -> ModuleType:
    import torch
    from torch.utils.cpp_extension import load
    if torch.version.cuda is None:
        raise RuntimeError(f"this PyTorch ({torch.__version__}) was built without CUDA")
    return load(name=name, sources=sources, extra_cflags=["-O3", *defines],
                extra_cuda_cflags=[*cuda_flags(), *defines], build_directory=_build_directory(name),
                verbose=False)


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


def load_cuda(head_size: int) -> ModuleType:
    """The CUDA extension for RWKV-5.2/6/7 (``wkv6``, ``wkv7``) with head size ``head_size``."""
    if not 1 <= head_size <= CUDA_MAX_HEAD_SIZE:
        raise ValueError(f"the CUDA WKV kernels support head sizes 1..{CUDA_MAX_HEAD_SIZE}, got {head_size}")
    name = f"docstream_wkv_cuda_n{head_size}_{_cuda_arch_tag()}"

    def build() -> ModuleType:
        return _load_cuda_extension(name, [str(CSRC / "wkv_cuda.cpp"), str(CSRC / "wkv_cuda.cu")],
                                    [f"-DWKV_N={head_size}"])

    return _memoized(name, build, cuda_install_hint())


def load_cuda_wkv4() -> ModuleType:
    """The CUDA extension for RWKV-4 (``wkv4``)."""
    name = f"docstream_wkv4_cuda_{_cuda_arch_tag()}"

    def build() -> ModuleType:
        return _load_cuda_extension(name, [str(CSRC / "wkv4_cuda.cpp"), str(CSRC / "wkv4_cuda.cu")], [])

    return _memoized(name, build, cuda_install_hint())


#: Tokens between two state checkpoints of the RWKV-7 training kernels (compiled into the CUDA one).
TRAIN_CHUNK = 16


def load_cuda_train(head_size: int) -> ModuleType:
    """The CUDA RWKV-7 training extension (``wkv7_forward_train``, ``wkv7_backward``) for head size
    ``head_size``, checkpointing every :data:`TRAIN_CHUNK` tokens."""
    if not 1 <= head_size <= CUDA_MAX_HEAD_SIZE:
        raise ValueError(f"the CUDA WKV kernels support head sizes 1..{CUDA_MAX_HEAD_SIZE}, got {head_size}")
    name = f"docstream_wkv7_train_cuda_n{head_size}_k{TRAIN_CHUNK}_{_cuda_arch_tag()}"

    def build() -> ModuleType:
        return _load_cuda_extension(name, [str(CSRC / "wkv7_train_cuda.cpp"), str(CSRC / "wkv7_train_cuda.cu")],
                                    [f"-DWKV_N={head_size}", f"-DWKV_CHUNK={TRAIN_CHUNK}"])

    return _memoized(name, build, cuda_install_hint())
