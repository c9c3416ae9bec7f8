"""The compiled RWKV-7 backward (docstream.kernels.autograd) against autograd through the reference.

Every gradient -- r, w, k, v, a, b and the initial state -- is compared on odd sizes (T around and
across the checkpoint interval, a partial last block), with a random nonzero initial state and a
gradient flowing into the final state. The parity tests run on CPU and, when a GPU is present, on
CUDA (marked ``gpu``; skipped cleanly otherwise).
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from docstream.kernels import (
    autograd,
    build,
    dispatch,
    wkv6,
    wkv7,
    wkv7_ref,
    wkv7_train,
)
from docstream.model.loader import build_model
from docstream.testing.checkpoints import make_random_checkpoint
from tests.helpers import load_or_skip

HAS_CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]

# (B, T, H, N): T in (1, 15, 16, 17, 63, 65) around the checkpoint interval 16, B in (1, 3), N in (16, 64)
SHAPES = [(1, 1, 1, 16), (3, 1, 2, 64), (1, 15, 2, 16), (3, 16, 1, 64), (3, 17, 2, 16), (1, 17, 1, 64),
          (1, 63, 2, 64), (3, 65, 1, 16), (1, 65, 2, 64)]

# max error relative to the largest reference gradient (+ rtol of each element); bf16: a rounding step
TOL = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2}}
NAMES = ("r", "w", "k", "v", "a", "b", "state")


def backend_for(device: str, head_size: int) -> str:
    """The explicit backend for ``device``; skips when its training extension cannot be built here (fails
    instead with DOCSTREAM_REQUIRE_KERNELS=1, as in CI)."""
    load = build.load_cpu_train if device == "cpu" else lambda: build.load_cuda_train(head_size)
    load_or_skip(load, f"the compiled {device} RWKV-7 training kernels")
    return device


def close(actual, expected, rtol, atol, what=""):
    """``|actual - expected| <= atol * max|expected| + rtol * |expected|`` elementwise."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{what}: {actual.shape} {actual.dtype} vs {expected.shape} {expected.dtype}"
    a, e = actual.double(), expected.double()
    scale = max(e.abs().max().item(), 1e-30)
    err = (a - e).abs()
    worst = (err - (atol * scale + rtol * e.abs())).max().item()
    assert worst <= 0, f"{what}: max error {err.max().item():.3g} exceeds bound (scale {scale:.3g})"


def inputs7(B, T, H, N, seed, dtype=torch.float32, device="cpu"):
    """Model-like inputs: a = -kk, b = kk * iclr with kk unit rows, decay w in (0.545, 1), fp32 w."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    kk = F.normalize(rnd(B, T, H, N), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=g)
    w = torch.exp(-0.606531 * torch.rand(B, T, H, N, generator=g))
    r, k, v, a, b = rnd(B, T, H, N), rnd(B, T, H, N) * 0.5, rnd(B, T, H, N), -kk, kk * iclr
    s = rnd(B, H, N, N) * 0.3

    def cast(x):
        return x.to(device=device, dtype=dtype)

    return [cast(r), w.to(device), cast(k), cast(v), cast(a), cast(b), s.to(device)]


def grads_of(fn, xs, dy, ds):
    """Gradients of ``sum(y * dy) + sum(state * ds)`` wrt every tensor of ``xs``."""
    leaves = [x.detach().clone().requires_grad_(True) for x in xs]
    y, s = fn(*leaves)
    loss = (y.float() * dy.float()).sum() + (s * ds).sum()
    loss.backward()
    return y, s, [x.grad for x in leaves]


def cotangents(xs, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    r, state = xs[0], xs[-1]
    dy = torch.randn(r.shape, generator=g).to(device=r.device, dtype=r.dtype)
    ds = torch.randn(state.shape, generator=g).to(state.device)
    return dy, ds


# --------------------------------------------------------------------------------------------------
# parity with autograd through the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
def test_wkv7_gradients_match_reference(device, dtype, shape):
    backend = backend_for(device, shape[-1])
    xs = inputs7(*shape, seed=sum(shape), dtype=dtype, device=device)
    dy, ds = cotangents(xs, sum(shape))
    y, s, got = grads_of(lambda *a: wkv7(*a, backend=backend), xs, dy, ds)
    y_ref, s_ref, want = grads_of(wkv7_ref, xs, dy, ds)
    close(y, y_ref, **TOL[dtype], what="y")
    close(s, s_ref, rtol=2e-5, atol=2e-5, what="state")
    for name, g, g_ref, x in zip(NAMES, got, want, xs):
        assert g.dtype == x.dtype, name  # gradients come back in the dtype of their input
        close(g, g_ref, **TOL[dtype], what=f"d{name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N", [8, 13, 32, 128])
def test_other_head_sizes(device, N):
    """Head sizes with their own compiled paths: 32 and 128, and sizes that are not a multiple of 8."""
    backend = backend_for(device, N)
    xs = inputs7(2, 20, 1, N, seed=N, device=device)
    dy, ds = cotangents(xs, N)
    _, _, got = grads_of(lambda *a: wkv7(*a, backend=backend), xs, dy, ds)
    _, _, want = grads_of(wkv7_ref, xs, dy, ds)
    for name, g, g_ref in zip(NAMES, got, want):
        close(g, g_ref, **TOL[torch.float32], what=f"d{name}")


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_inputs(device):
    backend = backend_for(device, 16)
    xs = inputs7(2, 21, 2, 16, seed=4, dtype=torch.float16, device=device)
    dy, ds = cotangents(xs, 4)
    _, _, got = grads_of(lambda *a: wkv7_train(*a, backend=backend), xs, dy, ds)
    _, _, want = grads_of(wkv7_ref, xs, dy, ds)
    for name, g, g_ref in zip(NAMES, got, want):
        close(g, g_ref, rtol=2e-3, atol=2e-3, what=f"d{name}")


def test_gradcheck_fp64_across_checkpoints():
    """The CPU kernels run in fp64 for fp64 inputs: gradcheck against finite differences, T across
    two checkpoint blocks plus a partial one."""
    backend_for("cpu", 4)
    B, T, H, N = 1, 2 * autograd.CHUNK + 3, 2, 4
    xs = [x.double().requires_grad_(True) for x in inputs7(B, T, H, N, seed=0)]
    assert torch.autograd.gradcheck(lambda *a: wkv7_train(*a, backend="cpu"), xs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2, 5, 16, 64])
def test_any_checkpoint_interval_gives_the_same_gradients(chunk):
    """The CPU kernel takes the interval as an argument: every block split (partial last block
    included) gives the gradients of the reference."""
    backend_for("cpu", 16)
    ext = build.load_cpu_train()
    xs = inputs7(2, 37, 2, 16, seed=chunk)
    dy, ds = cotangents(xs, chunk)
    _, _, ckpt = ext.wkv7_forward_train(*xs, chunk)
    assert ckpt.shape == (2, 2, -(-37 // chunk), 16, 16)
    got = ext.wkv7_backward(*xs[:6], dy, ds, ckpt, chunk)
    _, _, want = grads_of(wkv7_ref, xs, dy, ds)
    for name, g, g_ref in zip(NAMES, got, want):
        close(g, g_ref, **TOL[torch.float32], what=f"d{name}")


# --------------------------------------------------------------------------------------------------
# the autograd contract


@pytest.mark.parametrize("device", DEVICES)
def test_partial_requirements_and_one_sided_losses(device):
    """Only the inputs that require grad get one; a loss on y alone or on the state alone works."""
    backend = backend_for(device, 16)
    r, w, k, v, a, b, s = inputs7(2, 19, 1, 16, seed=9, device=device)
    s_before = s.clone()
    s.requires_grad_(True)
    k.requires_grad_(True)
    y, s_out = wkv7(r, w, k, v, a, b, s, backend=backend)
    assert type(y.grad_fn).__name__.startswith("WKV7Function")
    s_out.sum().backward()  # state only: dy is None in the backward
    ref_k = k.detach().clone().requires_grad_(True)
    ref_s = s.detach().clone().requires_grad_(True)
    s_ref = wkv7_ref(r, w, ref_k, v, a, b, ref_s)[1]
    s_ref.sum().backward()
    close(k.grad, ref_k.grad, **TOL[torch.float32], what="dk (state loss)")
    close(s.grad, ref_s.grad, **TOL[torch.float32], what="dstate (state loss)")
    assert r.grad is None and w.grad is None
    assert torch.equal(s.detach(), s_before)  # the state passed in is never modified

    k.grad = s.grad = None
    y, _ = wkv7(r, w, k, v, a, b, s, backend=backend)
    y.square().sum().backward()  # y only: the final state's gradient is None
    ref_k.grad = ref_s.grad = None
    wkv7_ref(r, w, ref_k, v, a, b, ref_s)[0].square().sum().backward()
    close(k.grad, ref_k.grad, **TOL[torch.float32], what="dk (y loss)")
    close(s.grad, ref_s.grad, **TOL[torch.float32], what="dstate (y loss)")


@pytest.mark.parametrize("device", DEVICES)
def test_state_carried_across_chunks(device):
    """Training on two chunks with the state carried between them gives the whole sequence's gradients."""
    backend = backend_for(device, 16)
    xs = inputs7(2, 40, 2, 16, seed=12, device=device)
    dy, ds = cotangents(xs, 12)

    def chunked(r, w, k, v, a, b, s):
        y1, s1 = wkv7(r[:, :23], w[:, :23], k[:, :23], v[:, :23], a[:, :23], b[:, :23], s, backend=backend)
        y2, s2 = wkv7(r[:, 23:], w[:, 23:], k[:, 23:], v[:, 23:], a[:, 23:], b[:, 23:], s1, backend=backend)
        return torch.cat([y1, y2], 1), s2

    _, _, got = grads_of(chunked, xs, dy, ds)
    _, _, want = grads_of(wkv7_ref, xs, dy, ds)
    for name, g, g_ref in zip(NAMES, got, want):
        close(g, g_ref, **TOL[torch.float32], what=f"d{name}")


def test_no_grad_still_uses_the_forward_only_kernel():
    backend_for("cpu", 16)
    r, w, k, v, a, b, s = inputs7(1, 5, 1, 16, seed=0)
    r.requires_grad_(True)
    with torch.no_grad():
        y, _ = wkv7(r, w, k, v, a, b, s, backend="cpu")
    assert y.grad_fn is None


def test_wkv6_compiled_stays_forward_only():
    backend_for("cpu", 16)
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(1, 4, 1, 8, generator=g) for _ in range(3))
    w, u, s = torch.rand(1, 4, 1, 8, generator=g), torch.randn(1, 8, generator=g), torch.zeros(1, 1, 8, 8)
    r.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        wkv6(r, k, v, w, u, s, backend="cpu")
    wkv6(r, k, v, w, u, s, backend="auto")[0].sum().backward()  # the differentiable reference
    assert r.grad is not None


def test_auto_falls_back_to_the_reference_when_the_training_build_fails(monkeypatch):
    def failing():
        raise build.BuildError("could not build 'x'. To use it, install a C++ compiler and ninja.",
                               reason="c++: not found")

    monkeypatch.setattr(build, "load_cpu_train", failing)
    monkeypatch.setattr(dispatch, "_WARNED", set())
    xs = inputs7(1, 6, 1, 8, seed=1)
    dy, ds = cotangents(xs, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, got = grads_of(lambda *a: wkv7(*a, backend="auto"), xs, dy, ds)
        grads_of(lambda *a: wkv7(*a, backend="auto"), xs, dy, ds)
    ours = [w for w in caught if "RWKV-7 training kernels" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    _, _, want = grads_of(wkv7_ref, xs, dy, ds)
    for g, g_ref in zip(got, want):
        assert torch.equal(g, g_ref)
    with pytest.raises(build.BuildError):
        grads_of(lambda *a: wkv7(*a, backend="cpu"), xs, dy, ds)


def test_wkv7_train_argument_errors():
    r, w, k, v, a, b, s = inputs7(1, 4, 2, 8, seed=0)
    with pytest.raises(ValueError, match="state must have shape"):
        wkv7_train(r, w, k, v, a, b, s[:, :1])
    with pytest.raises(ValueError, match="share one"):
        wkv7_train(r, w, k[:, :2], v, a, b, s)
    with pytest.raises(ValueError, match="CUDA tensors"):
        wkv7_train(r, w, k, v, a, b, s, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        wkv7_train(r, w, k, v, a, b, s, backend="torch")


# --------------------------------------------------------------------------------------------------
# a whole model


def test_tiny_rwkv7_model_gradients_match_torch_backend():
    """Parameter and carried-state gradients of a 2-layer RWKV-7 are the same with the compiled
    backward (backend="cpu") and with autograd through the reference (backend="torch")."""
    backend_for("cpu", 16)
    sd = make_random_checkpoint("7", n_layer=2, n_embd=32, head_size=16, vocab_size=61,
                                lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16}, seed=7)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 61, (3, 21), generator=g)
    targets = torch.randint(0, 61, (3, 21), generator=g)
    results = {}
    for backend in ("torch", "cpu"):
        model = build_model(sd).set_backend(backend)
        _, state = model.forward(tokens[:, :9])  # a nonzero state carried in from an earlier chunk
        state.wkv.requires_grad_(True)
        model.requires_grad_(True)
        logits, new_state = model.forward_train(tokens, state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + new_state.wkv.square().mean()
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()}, state.wkv.grad)
    loss_t, grads_t, swkv_t = results["torch"]
    loss_c, grads_c, swkv_c = results["cpu"]
    torch.testing.assert_close(loss_c, loss_t, rtol=1e-5, atol=1e-6)
    assert grads_t.keys() == grads_c.keys()
    for name, g_t in grads_t.items():
        assert g_t is not None and grads_c[name] is not None, name
        close(grads_c[name], g_t, rtol=1e-3, atol=1e-4, what=name)
    assert swkv_t is not None and swkv_c is not None
    close(swkv_c, swkv_t, rtol=1e-3, atol=1e-4, what="carried wkv state")
