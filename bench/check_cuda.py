"""Check the CUDA WKV kernels in one call.

1. Compile-only (any machine with nvcc, no GPU needed): ``nvcc -c`` of every ``.cu`` file for sm_80 and
   sm_90 with torch's include paths and nvcc flags (the RWKV-7 training kernels of
   ``wkv7_train_cuda.cu`` included, at head sizes 16/64/128), and a ``-fsyntax-only`` pass of the C++
   bindings.
2. With a GPU (skipped otherwise): build the extensions the way docstream does at run time, run
   ``pytest -m gpu tests/kernels``, and time the CUDA ops against the PyTorch reference on the GPU
   (inference, and forward + backward of RWKV-7).

    python bench/check_cuda.py                 # everything this machine can do
    python bench/check_cuda.py --compile-only  # step 1 only
    python bench/check_cuda.py --skip-compile-check --junit out.xml   # on a GPU machine: steps 2 only

On a GPU the extensions are first built side by side in separate processes (each into torch's
extension cache), so the tests and timings that follow load them without waiting.

Exits non-zero when a step fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch.utils import cpp_extension

from docstream.kernels import build

ARCHS = ("80", "90")
HEAD_SIZES = (64, 24, 128)  # the common size, an odd one, the largest released one
TRAIN_HEAD_SIZES = (16, 64, 128)  # the sizes the RWKV-7 training kernels are checked at


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def run(cmd: list[str], what: str) -> bool:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    ok = proc.returncode == 0
    print(f"  {'ok  ' if ok else 'FAIL'} {what} ({time.perf_counter() - t0:.1f} s)")
    if not ok:
        print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:]))
    return ok


def compile_only(nvcc: str) -> bool:
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    candidates = [Path(h) / "include" for h in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME) if h]
    candidates += [Path(nvcc).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    cuda_include = next((c for c in candidates if (c / "cuda_runtime.h").exists()), candidates[-1])
    print(f"compile-only check with {nvcc} "
          f"({subprocess.run([nvcc, '--version'], capture_output=True, text=True, check=False).stdout.strip().splitlines()[-1]})")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            gencode = f"-gencode=arch=compute_{arch},code=sm_{arch}"
            base = [nvcc, "-c", "-std=c++20", gencode, *cpp_extension.COMMON_NVCC_FLAGS, *build.cuda_flags(),
                    *includes, "-Xcompiler", "-fPIC"]
            for key, spec in build.EXTENSIONS.items():
                if spec.device != "cuda":
                    continue
                sizes = (TRAIN_HEAD_SIZES if key == "cuda_train" else HEAD_SIZES) if spec.per_head_size else (None,)
                for src in (src for src in spec.sources if src.endswith(".cu")):
                    for n in sizes:
                        flags = spec.flags(n)
                        ok &= run([*base, *flags, str(build.CSRC / src), "-o", f"{tmp}/{key}_{n}_{arch}.o"],
                                  f"{src} sm_{arch} {' '.join(flags)}".rstrip())
        # the head-size limit of build.py is the one the sources enforce: one past it must not compile
        spec = build.EXTENSIONS["cuda"]
        proc = subprocess.run([nvcc, "-c", "-std=c++20", *includes, *spec.flags(build.MAX_HEAD_SIZE + 1),
                               str(build.CSRC / "wkv_cuda.cu"), "-o", f"{tmp}/too_big.o"],
                              capture_output=True, text=True, check=False)
        rejected = proc.returncode != 0 and "WKV_N must be in 1..WKV_MAX_N" in proc.stdout + proc.stderr
        print(f"  {'ok  ' if rejected else 'FAIL'} wkv_cuda.cu N={build.MAX_HEAD_SIZE + 1} is rejected by its "
              f"static_assert (MAX_HEAD_SIZE={build.MAX_HEAD_SIZE})")
        ok &= rejected
        # the bindings, as the host compiler sees them (a CPU-only torch lacks one generated header)
        stub = Path(tmp) / "stub"
        macros = "c10/cuda/impl/cuda_cmake_macros.h"
        if not any((Path(p) / macros).exists() for p in cpp_extension.include_paths()):
            (stub / macros).parent.mkdir(parents=True)
            (stub / macros).write_text("#pragma once\n")
        cxx = os.environ.get("CXX", "c++")
        bindings = sorted({src for spec in build.EXTENSIONS.values() if spec.device == "cuda"
                           for src in spec.sources if src.endswith(".cpp")})
        for src in bindings:
            ok &= run([cxx, "-std=c++20", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=check", *includes,
                       f"-I{sysconfig.get_paths()['include']}", f"-I{cuda_include}", f"-I{stub}",
                       str(build.CSRC / src)], f"{src} (host compiler, syntax only)")
    return ok


def time_cuda_ops() -> None:
    import torch.nn.functional as F

    from docstream.kernels import wkv4, wkv4_ref, wkv6, wkv6_ref, wkv7, wkv7_ref

    def best_ms(fn, repeat=20):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    dev = "cuda"

    def in7(B, T, H, N, dtype):
        kk = F.normalize(torch.randn(B, T, H, N, device=dev), dim=-1)
        w = torch.exp(-0.606531 * torch.rand(B, T, H, N, device=dev))
        cast = lambda x: x.to(dtype)
        return (cast(torch.randn(B, T, H, N, device=dev)), w, cast(torch.randn(B, T, H, N, device=dev) * 0.5),
                cast(torch.randn(B, T, H, N, device=dev)), cast(-kk), cast(kk * 0.5),
                torch.randn(B, H, N, N, device=dev) * 0.1)

    def in6(B, T, H, N, dtype):
        r, k, v = (torch.randn(B, T, H, N, device=dev).to(dtype) for _ in range(3))
        w = torch.exp(-torch.exp(torch.randn(B, T, H, N, device=dev) - 1))
        return r, k, v, w, torch.randn(H, N, device=dev), torch.randn(B, H, N, N, device=dev) * 0.1

    def in4(B, T, C, dtype):
        s = torch.zeros(B, 3, C, device=dev)
        s[:, 2] = -1e30
        return (-torch.exp(torch.randn(C, device=dev) - 1), torch.randn(C, device=dev),
                torch.randn(B, T, C, device=dev).to(dtype), torch.randn(B, T, C, device=dev).to(dtype), s)

    print(f"\ntiming on {torch.cuda.get_device_name()} (ms, best of 20)")
    print(f"{'op':<40}{'cuda':>10}{'reference':>12}")
    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        for name, op, ref, xs in (
                (f"wkv7 B=1 T=1024 H=12 N=64 {tag}", wkv7, wkv7_ref, in7(1, 1024, 12, 64, dtype)),
                (f"wkv7 B=8 T=4096 H=32 N=64 {tag}", wkv7, None, in7(8, 4096, 32, 64, dtype)),
                (f"wkv7 B=16 T=1 H=12 N=64 {tag}", wkv7, wkv7_ref, in7(16, 1, 12, 64, dtype)),
                (f"wkv6 B=1 T=1024 H=12 N=64 {tag}", wkv6, wkv6_ref, in6(1, 1024, 12, 64, dtype)),
                (f"wkv4 B=1 T=1024 C=768 {tag}", wkv4, wkv4_ref, in4(1, 1024, 768, dtype))):
            with torch.no_grad():
                fast = best_ms(lambda op=op, xs=xs: op(*xs, backend="cuda"))
                slow = best_ms(lambda ref=ref, xs=xs: ref(*xs), repeat=3) if ref is not None else float("nan")
            print(f"{name:<40}{fast:>10.3f}{slow:>12.1f}")

    print(f"\nRWKV-7 forward + backward (ms, best of 20; reference best of 3)\n{'op':<40}{'cuda':>10}{'reference':>12}")
    for dtype in (torch.float32, torch.bfloat16):
        tag = str(dtype).replace("torch.", "")
        for B, T, H, with_ref in ((8, 256, 4, True), (8, 4096, 32, False)):
            xs = [x.requires_grad_(True) for x in in7(B, T, H, 64, dtype)]
            dy, ds = torch.randn_like(xs[0]), torch.randn_like(xs[-1])

            def train(op, xs=xs, dy=dy, ds=ds):
                y, s = op(*xs)
                torch.autograd.backward((y, s), (dy, ds))

            fast = best_ms(lambda: train(lambda *a: wkv7(*a, backend="cuda")))
            slow = best_ms(lambda: train(wkv7_ref), repeat=3) if with_ref else float("nan")
            print(f"{f'wkv7 fwd+bwd B={B} T={T} H={H} N=64 {tag}':<40}{fast:>10.3f}{slow:>12.1f}")


#: (what, loader expression) for every CUDA extension the GPU tests and timings load
EXTENSIONS = ([("wkv4", "build.load_cuda_wkv4()"), ("linear_i8", "build.load_cuda_i8()")]
              + [(f"wkv6/wkv7 N={n}", f"build.load_cuda({n})") for n in (64, 16, 24, 13, 32)]
              + [(f"wkv7 training N={n}", f"build.load_cuda_train({n})") for n in (64, 16, 8, 13, 32, 128)])


def prebuild() -> bool:
    """Build every CUDA extension in parallel processes; True when all built."""
    t0 = time.perf_counter()
    procs = [(what, subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                               f"from docstream.kernels import build; {expr}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for what, expr in EXTENSIONS]
    ok = True
    for what, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            ok = False
            print(f"  FAIL {what}\n{out[-4000:]}")
        else:
            print(f"  ok   {what}")
    print(f"  {len(procs)} extensions built side by side in {time.perf_counter() - t0:.1f} s")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile-only", action="store_true", help="only the nvcc / host compiler checks")
    parser.add_argument("--skip-compile-check", action="store_true",
                        help="skip step 1 (on a GPU machine the builds of step 2 compile the same sources)")
    parser.add_argument("--junit", help="write the GPU tests' JUnit XML report here")
    parser.add_argument("--only", action="append", choices=["build", "tests", "timing"],
                        help="with a GPU: run only these steps of step 2 (repeatable; default all three)")
    args = parser.parse_args()

    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (set CUDA_HOME or put it on PATH)")
        return 1
    if not args.skip_compile_check:
        ok = compile_only(nvcc)
        print(f"compile-only check: {'PASSED' if ok else 'FAILED'}")
        if not ok or args.compile_only:
            return 0 if ok else 1
    if not torch.cuda.is_available():
        print(f"no usable GPU (torch {torch.__version__}, CUDA {torch.version.cuda}): stopping after the compile check")
        return 0

    steps = set(args.only or ("build", "tests", "timing"))
    if "build" in steps:
        print(f"\nbuilding the extensions on {torch.cuda.get_device_name()} "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
        if not prebuild():
            return 1
    rc = 0
    if "tests" in steps:
        print("\npytest -m gpu tests/kernels tests/model/test_gpu.py", flush=True)
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests/kernels", "tests/model/test_gpu.py"]
        if args.junit:
            cmd.append(f"--junitxml={args.junit}")
        rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if "timing" in steps:
        time_cuda_ops()
    return rc


if __name__ == "__main__":
    sys.exit(main())
