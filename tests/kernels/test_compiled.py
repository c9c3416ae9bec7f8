"""The compiled WKV kernels (CPU C++ and CUDA) against the pure-PyTorch references, plus dispatch.

Every parity test runs on CPU and, when a GPU is present, on CUDA (marked ``gpu``; skipped cleanly
otherwise). Half-precision inputs are compared with the reference run on the same half inputs.
"""
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from docstream.kernels import build, dispatch, wkv4, wkv4_ref, wkv6, wkv6_ref, wkv7, wkv7_ref
from tests.helpers import load_or_skip

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16")]

# (B, T, H, N): every T in (1, 15, 63, 65, 1000), B and H in (1, 3), N in (16, 24, 64) and an odd 13
SHAPES = [(1, 1, 1, 16), (3, 1, 3, 64), (3, 15, 3, 24), (1, 63, 3, 64), (3, 65, 1, 16), (1, 1000, 3, 64),
          (3, 1000, 1, 24), (3, 33, 3, 13)]
# (B, T, C) for RWKV-4
SHAPES4 = [(1, 1, 16), (3, 15, 72), (1, 63, 64), (3, 65, 77), (1, 1000, 768), (3, 1000, 40)]

# fp32: max error relative to the largest reference value; half types: one rounding step of the output
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
       torch.float16: dict(rtol=2e-3, atol=2e-3)}
STATE_TOL = dict(rtol=2e-5, atol=2e-5)  # the state is fp32 whatever the input dtype


def backend_for(device: str) -> str:
    """The explicit backend for ``device``; skips when its extension cannot be built here (fails instead
    with DOCSTREAM_REQUIRE_KERNELS=1, as in CI)."""
    load_or_skip(build.load_cpu if device == "cpu" else build.load_cuda_wkv4, f"the compiled {device} WKV kernels")
    return device


def close(actual, expected, rtol, atol, what=""):
    """``|actual - expected| <= atol * max|expected| + rtol * |expected|`` elementwise."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    a, e = actual.double(), expected.double()
    scale = max(e.abs().max().item(), 1e-30)
    err = (a - e).abs()
    bound = atol * scale + rtol * e.abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"{what}: max error {err.max().item():.3g} exceeds bound (scale {scale:.3g})"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def inputs7(B, T, H, N, seed, dtype=torch.float32, device="cpu"):
    g = gen(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    kk = F.normalize(rnd(B, T, H, N), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=g)
    w = torch.exp(-0.606531 * torch.rand(B, T, H, N, generator=g))
    r, k, v, a, b = rnd(B, T, H, N), rnd(B, T, H, N) * 0.5, rnd(B, T, H, N), -kk, kk * iclr
    s = rnd(B, H, N, N) * 0.1
    half = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return half(r), w.to(device), half(k), half(v), half(a), half(b), s.to(device)


def inputs6(B, T, H, N, seed, dtype=torch.float32, device="cpu", expanded=False):
    g = gen(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    if expanded:  # RWKV-5.2: one decay per channel, passed as a stride-0 view
        w = torch.exp(-torch.exp(torch.randn(H, N, generator=g) - 1)).to(device).expand(B, T, H, N)
    else:
        w = torch.exp(-torch.exp(torch.randn(B, T, H, N, generator=g) - 1)).to(device)
    u = torch.randn(H, N, generator=g).to(device)
    s = (torch.randn(B, H, N, N, generator=g) * 0.1).to(device)
    return r, k, v, w, u, s


def inputs4(B, T, C, seed, dtype=torch.float32, device="cpu", fresh=False):
    g = gen(seed)
    w = -torch.exp(torch.randn(C, generator=g) - 1)
    u = torch.randn(C, generator=g)
    k, v = (torch.randn(B, T, C, generator=g).to(dtype) for _ in range(2))
    a = torch.randn(B, C, generator=g)
    b = torch.rand(B, C, generator=g) + 0.5
    p = torch.randn(B, C, generator=g)
    if fresh:
        a, b, p = torch.zeros(B, C), torch.zeros(B, C), torch.full((B, C), -1e30)
    s = torch.stack((a, b, p), dim=1)
    return tuple(x.to(device) for x in (w, u, k, v, s))


# --------------------------------------------------------------------------------------------------
# parity with the references


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
def test_wkv7_matches_reference(device, dtype, shape):
    backend = backend_for(device)
    args = inputs7(*shape, seed=sum(shape), dtype=dtype, device=device)
    y, s = wkv7(*args, backend=backend)
    y_ref, s_ref = wkv7_ref(*args)
    close(y, y_ref, **TOL[dtype], what="y")
    close(s, s_ref, **STATE_TOL, what="state")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
def test_wkv6_matches_reference(device, dtype, shape):
    backend = backend_for(device)
    args = inputs6(*shape, seed=sum(shape), dtype=dtype, device=device)
    y, s = wkv6(*args, backend=backend)
    y_ref, s_ref = wkv6_ref(*args)
    close(y, y_ref, **TOL[dtype], what="y")
    close(s, s_ref, **STATE_TOL, what="state")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_wkv6_expanded_fp32_decay_with_half_inputs(device, dtype):
    """RWKV-5.2 passes its decay as an fp32 stride-0 view even when r, k, v are bf16/fp16."""
    backend = backend_for(device)
    args = inputs6(2, 40, 3, 64, seed=5, dtype=dtype, device=device, expanded=True)
    assert args[3].stride()[:2] == (0, 0) and args[3].dtype == torch.float32
    y, s = wkv6(*args, backend=backend)
    y_ref, s_ref = wkv6_ref(*args)
    close(y, y_ref, **TOL[dtype], what="y")
    close(s, s_ref, **STATE_TOL, what="state")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES4, ids=lambda s: "B{}T{}C{}".format(*s))
def test_wkv4_matches_reference(device, dtype, shape):
    backend = backend_for(device)
    args = inputs4(*shape, seed=sum(shape), dtype=dtype, device=device)
    y, s = wkv4(*args, backend=backend)
    y_ref, s_ref = wkv4_ref(*args)
    close(y, y_ref, **TOL[dtype], what="y")
    close(s, s_ref, **STATE_TOL, what="state")


@pytest.mark.parametrize("device", DEVICES)
def test_wkv4_from_the_fresh_model_state(device):
    """The model starts RWKV-4 with p = -1e30 ("minus infinity"): no inf/nan, same as the reference."""
    backend = backend_for(device)
    args = inputs4(2, 50, 96, seed=1, device=device, fresh=True)
    y, s = wkv4(*args, backend=backend)
    y_ref, s_ref = wkv4_ref(*args)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    close(y, y_ref, **TOL[torch.float32], what="y")
    close(s, s_ref, **STATE_TOL, what="state")


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    """Views with odd strides (a time slice, a permuted last dimension) give the same result."""
    backend = backend_for(device)
    B, T, H, N = 2, 9, 3, 16
    r, w, k, v, a, b, s = inputs7(B, 2 * T, H, N, seed=3, device=device)
    sliced = [x[:, ::2] for x in (r, w, k, v, a, b)]  # stride 2 in time
    y, s1 = wkv7(*sliced, s, backend=backend)
    y_ref, s_ref = wkv7_ref(*(x.contiguous() for x in sliced), s)
    close(y, y_ref, **TOL[torch.float32], what="y")
    close(s1, s_ref, **STATE_TOL, what="state")
    # last dimension not contiguous: the wrapper copies
    rt = r.transpose(2, 3).contiguous().transpose(2, 3)
    assert rt.stride(-1) != 1
    y2, _ = wkv7(rt, w, k, v, a, b, s, backend=backend)
    close(y2, wkv7_ref(r, w, k, v, a, b, s)[0], **TOL[torch.float32], what="y (transposed r)")
    r6, k6, v6, w6, u6, s6 = inputs6(B, T, H, N, seed=4, device=device)
    y6, _ = wkv6(r6, k6.transpose(2, 3).contiguous().transpose(2, 3), v6, w6, u6, s6, backend=backend)
    close(y6, wkv6_ref(r6, k6, v6, w6, u6, s6)[0], **TOL[torch.float32], what="y6")
    w4, u4, k4, v4, st4 = inputs4(2, 2 * T, 32, seed=6, device=device)
    y4, _ = wkv4(w4, u4, k4[:, ::2], v4[:, ::2], st4, backend=backend)
    close(y4, wkv4_ref(w4, u4, k4[:, ::2].contiguous(), v4[:, ::2].contiguous(), st4)[0],
          **TOL[torch.float32], what="y4")


# --------------------------------------------------------------------------------------------------
# the state contract


@pytest.mark.parametrize("device", DEVICES)
def test_input_state_is_not_modified(device):
    backend = backend_for(device)
    args7 = inputs7(2, 20, 2, 16, seed=7, device=device)
    args6 = inputs6(2, 20, 2, 16, seed=8, device=device)
    args4 = inputs4(2, 20, 32, seed=9, device=device)
    for op, args in ((wkv7, args7), (wkv6, args6), (wkv4, args4)):
        before = args[-1].clone()
        _, s_new = op(*args, backend=backend)
        assert torch.equal(args[-1], before), op.__name__
        assert s_new.data_ptr() != args[-1].data_ptr()
        assert s_new.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend_kind", ["compiled", "torch"])
def test_state_read_from_and_written_into_a_stacked_state(device, backend_kind):
    """The state in and ``out`` may be one layer's slice of a [B, L, ...] state (any batch stride), and
    ``out`` may be the input state itself: the result is bitwise that of a call on contiguous tensors."""
    backend = backend_for(device) if backend_kind == "compiled" else "torch"
    for op, args in ((wkv7, inputs7(3, 9, 2, 16, seed=21, device=device)),
                     (wkv6, inputs6(3, 9, 2, 16, seed=22, device=device)),
                     (wkv4, inputs4(3, 9, 40, seed=23, device=device))):
        *xs, s = args
        y_ref, s_ref = op(*xs, s, backend=backend)
        stacked = torch.randn(3, 4, *s.shape[1:], device=device)
        stacked[:, 1] = s
        outs = torch.full_like(stacked, float("nan"))
        y, s_new = op(*xs, stacked[:, 1], backend=backend, out=outs[:, 2])
        assert s_new.data_ptr() == outs[:, 2].data_ptr(), op.__name__
        assert torch.equal(y, y_ref) and torch.equal(outs[:, 2], s_ref), op.__name__
        assert torch.equal(stacked[:, 1], s), f"{op.__name__} modified its input state"
        assert outs[:, [0, 1, 3]].isnan().all(), f"{op.__name__} wrote outside its slice of out"
        _, s_same = op(*xs, stacked[:, 1], backend=backend, out=stacked[:, 1])  # in place
        assert torch.equal(stacked[:, 1], s_ref) and s_same.data_ptr() == stacked[:, 1].data_ptr(), op.__name__
        with pytest.raises(ValueError, match="out must be a float32 tensor"):
            op(*xs, s, backend=backend, out=torch.empty(1, *s.shape[1:], device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split", [1, 13, 40])
def test_split_with_carried_state_equals_whole(device, split):
    """Bitwise: the per-token arithmetic of every kernel is the same whatever the sequence length."""
    backend = backend_for(device)
    T = 41
    r, w, k, v, a, b, s = inputs7(2, T, 3, 24, seed=split, device=device)
    parts = (slice(0, split), slice(split, T))
    y, s_end = wkv7(r, w, k, v, a, b, s, backend=backend)
    y1, s1 = wkv7(*(x[:, parts[0]] for x in (r, w, k, v, a, b)), s, backend=backend)
    y2, s2 = wkv7(*(x[:, parts[1]] for x in (r, w, k, v, a, b)), s1, backend=backend)
    assert torch.equal(torch.cat([y1, y2], 1), y) and torch.equal(s2, s_end)

    r, k, v, w, u, s = inputs6(2, T, 3, 24, seed=split, device=device)
    y, s_end = wkv6(r, k, v, w, u, s, backend=backend)
    y1, s1 = wkv6(r[:, :split], k[:, :split], v[:, :split], w[:, :split], u, s, backend=backend)
    y2, s2 = wkv6(r[:, split:], k[:, split:], v[:, split:], w[:, split:], u, s1, backend=backend)
    assert torch.equal(torch.cat([y1, y2], 1), y) and torch.equal(s2, s_end)

    w, u, k, v, s = inputs4(2, T, 40, seed=split, device=device)
    y, s_end = wkv4(w, u, k, v, s, backend=backend)
    y1, s1 = wkv4(w, u, k[:, :split], v[:, :split], s, backend=backend)
    y2, s2 = wkv4(w, u, k[:, split:], v[:, split:], s1, backend=backend)
    assert torch.equal(torch.cat([y1, y2], 1), y) and torch.equal(s2, s_end)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_do_not_depend_on_batch_companions(device):
    """Bitwise: each (batch, head) slice is computed on its own."""
    backend = backend_for(device)
    shared = {wkv7: (), wkv6: (4,), wkv4: (0, 1)}  # arguments without a batch dimension (u; w and u)
    for op, args in ((wkv7, inputs7(3, 17, 2, 24, seed=11, device=device)),
                     (wkv6, inputs6(3, 17, 2, 24, seed=12, device=device)),
                     (wkv4, inputs4(3, 17, 40, seed=13, device=device))):
        batched = op(*args, backend=backend)
        for row in range(3):
            pick = [x if i in shared[op] else x[row:row + 1] for i, x in enumerate(args)]
            alone = op(*pick, backend=backend)
            assert torch.equal(batched[0][row:row + 1], alone[0]), op.__name__
            assert torch.equal(batched[1][row:row + 1], alone[1]), op.__name__


# --------------------------------------------------------------------------------------------------
# dispatch: fallback, errors, devices


def _failing_loader(*_args, **_kwargs):
    raise build.BuildError("could not build the compiled WKV extension 'x': RuntimeError. To use it, "
                           f"{build.CPU_INSTALL_HINT}.\nLast lines of the build output:\nc++: not found")


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(build, "load_cpu", _failing_loader)
    monkeypatch.setattr(dispatch, "_WARNED", set())
    args7 = inputs7(1, 5, 2, 16, seed=0)
    args4 = inputs4(1, 5, 8, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, s = wkv7(*args7, backend="auto")
        y2, _ = wkv7(*args7, backend="auto")
        y4, _ = wkv4(*args4)
    y_ref, s_ref = wkv7_ref(*args7)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref) and torch.equal(y2, y_ref)
    assert torch.equal(y4, wkv4_ref(*args4)[0])
    ours = [w for w in caught if "WKV" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = str(ours[0].message)
    assert "C++ compiler" in msg and "ninja" in msg and "reference" in msg


def test_explicit_backend_build_failure_raises(monkeypatch):
    monkeypatch.setattr(build, "load_cpu", _failing_loader)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler") as info:
        wkv7(*inputs7(1, 3, 1, 16, seed=0), backend="cpu")
    assert "c++: not found" in str(info.value)


def test_build_error_quotes_the_compiler_and_is_remembered():
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("Error building extension 'docstream_test':\n[1/2] c++ -c wkv.cpp\n"
                           "wkv.cpp:3:1: error: 'boom' was not declared in this scope\nninja: build stopped")

    key = "docstream_test_broken_build"
    try:
        for _ in range(2):
            with pytest.raises(build.BuildError) as info:
                build._memoized(key, broken, build.CPU_INSTALL_HINT)
            text = str(info.value)
            assert "'boom' was not declared" in text and "ninja: build stopped" in text
            assert "C++ compiler" in text
            assert "'boom' was not declared" in info.value.reason  # the one-line summary the warning shows
        assert len(calls) == 1  # the failure is remembered, not retried
    finally:
        build._RESULTS.pop(key, None)


def test_cuda_install_hint_names_nvcc(monkeypatch):
    """With a CUDA build of torch the hint names nvcc and that CUDA version; with a CPU build it says to
    install a CUDA build of PyTorch first, and still names nvcc."""
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    hint = build.cuda_install_hint()
    assert "nvcc" in hint and "CUDA toolkit 12.4" in hint and "torch.version.cuda=12.4" in hint
    assert "CUDA build of PyTorch" not in hint
    monkeypatch.setattr(torch.version, "cuda", None)
    hint = build.cuda_install_hint()
    assert "install a CUDA build of PyTorch" in hint and "nvcc" in hint and "12.4" not in hint


def test_explicit_backend_on_the_wrong_device_raises():
    args = inputs7(1, 2, 1, 16, seed=0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        wkv7(*args, backend="cuda")
    w, u, k, v, s = inputs4(1, 2, 8, seed=0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        wkv4(w, u, k, v, s, backend="cuda")
    with pytest.raises(ValueError, match="unknown WKV backend"):
        wkv4(w, u, k, v, s, backend="tpu")
    if HAS_CUDA:
        with pytest.raises(ValueError, match="CPU tensors"):
            wkv7(*inputs7(1, 2, 1, 16, seed=0, device="cuda"), backend="cpu")


def test_cuda_head_size_limit_is_a_clear_error():
    """One limit, checked in one place (build.check_head_size) by every loader built per head size, before
    anything is built; the CUDA sources get the same number as -DWKV_MAX_N for their static_assert."""
    assert build.MAX_HEAD_SIZE == 256
    for bad in (0, build.MAX_HEAD_SIZE + 1):
        for loader in (build.load_cuda, build.load_cuda_train, build.check_head_size):
            with pytest.raises(ValueError, match="head sizes 1..256"):
                loader(bad)
    assert build.check_head_size(64) == 64 and build.cuda_supports(256) and not build.cuda_supports(257)
    for key, spec in build.EXTENSIONS.items():
        if spec.device == "cuda" and spec.per_head_size:
            assert "-DWKV_MAX_N=256" in spec.flags(64) and "-DWKV_N=64" in spec.flags(64), key
    for src in ("wkv_cuda.cu", "wkv7_train_cuda.cu"):
        assert "kN <= WKV_MAX_N" in (build.CSRC / src).read_text() or \
            "kN <= WKV_MAX_N" in (build.CSRC / "wkv_cuda_common.cuh").read_text(), src


def test_compiled_ops_are_forward_only():
    """wkv4/wkv6 compiled kernels are forward-only; wkv7 has a compiled backward (tests/kernels/test_backward.py)."""
    backend = backend_for("cpu")
    r6, k6, v6, w6, u6, s6 = inputs6(1, 4, 1, 8, seed=0)
    r6.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        wkv6(r6, k6, v6, w6, u6, s6, backend=backend)
    y6, _ = wkv6(r6, k6, v6, w6, u6, s6, backend="auto")  # the differentiable reference
    y6.sum().backward()
    assert r6.grad is not None
    r, w, k, v, a, b, s = inputs7(1, 4, 1, 8, seed=0)
    r.requires_grad_(True)
    y, _ = wkv7(r, w, k, v, a, b, s, backend=backend)
    y.sum().backward()
    assert r.grad is not None
    with torch.no_grad():
        wkv7(r, w, k, v, a, b, s, backend=backend)


def test_shape_errors_are_value_errors():
    backend_for("cpu")
    r, w, k, v, a, b, s = inputs7(1, 4, 2, 8, seed=0)
    with pytest.raises(ValueError, match="state must have shape"):
        wkv7(r, w, k, v, a, b, s[:, :1], backend="cpu")
    with pytest.raises(ValueError, match="share one"):
        wkv7(r, w, k[:, :2], v, a, b, s, backend="cpu")


def test_nothing_is_built_or_compiled_at_import():
    code = ("import sys, docstream.kernels, docstream.kernels.build as b; "
            "assert 'torch.utils.cpp_extension' not in sys.modules; assert not b._RESULTS")
    subprocess.run([sys.executable, "-c", code], check=True)
