"""RWKV-7's chunked (parallel-in-time) WKV against the token-by-token recurrence."""
import pytest
import torch
import torch.nn.functional as F

from docstream.kernels.chunked import wkv7_chunked_ref
from docstream.kernels.reference import wkv7_ref


def _inputs(B, T, H, N, seed, dtype=torch.float64, decay=None):
    """Random inputs as the model makes them: a = -kk, b = kk * iclr with kk unit-norm per head, the decay
    exp(-0.606531 * sigmoid(.)) (or ``decay``), and a random initial state."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda: torch.randn(B, T, H, N, generator=g, dtype=torch.float64)  # noqa: E731
    kk = F.normalize(rnd(), dim=-1)
    w = torch.exp(-0.606531 * torch.sigmoid(rnd())) if decay is None else decay(rnd())
    xs = (rnd(), w, rnd() * 0.5, rnd(), -kk, kk * torch.sigmoid(rnd()))
    return (*(x.to(dtype) for x in xs), torch.randn(B, H, N, N, generator=g, dtype=torch.float64) * 0.1)


def _sequential64(r, w, k, v, a, b, s):
    """The recurrence one token at a time in float64, per head as matrices:
    S <- S diag(w) + (S a^T) b + v^T k, y = S r^T."""
    s = s.double().clone()
    ys = []
    for t in range(r.shape[1]):
        rt, wt, kt, vt, at, bt = (x[:, t].double() for x in (r, w, k, v, a, b))   # [B, H, N]
        sa = torch.einsum("bhvn,bhn->bhv", s, at)
        s = s * wt[:, :, None, :] + sa[..., None] * bt[:, :, None, :] + vt[..., None] * kt[:, :, None, :]
        ys.append(torch.einsum("bhvn,bhn->bhv", s, rt))
    return torch.stack(ys, dim=1), s


def _rel(x, ref):
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("T", [1, 15, 16, 17, 63, 65, 1000])
def test_chunks_of_16_give_the_recurrence_in_float64(T):
    x = _inputs(2, T, 3, 8, seed=T)
    y, s = wkv7_chunked_ref(*x, chunk=16)
    want_y, want_s = _sequential64(*x)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    assert _rel(y, want_y) < 1e-10 and _rel(s, want_s) < 1e-10


@pytest.mark.parametrize("chunk", [1, 5, 16, 64, 200])
def test_any_chunk_length_gives_the_same_result(chunk):
    x = _inputs(1, 130, 2, 16, seed=chunk)
    y, s = wkv7_chunked_ref(*x, chunk=chunk)
    want_y, want_s = _sequential64(*x)
    assert _rel(y, want_y) < 1e-10 and _rel(s, want_s) < 1e-10


@pytest.mark.parametrize("T", [16, 65, 1000])
def test_float32_and_bf16_inputs_match_the_reference_kernel(T):
    # what the model passes: r, k, v, a, b in the model's dtype, the decay in fp32, an fp32 state
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        r, w, k, v, a, b, s = _inputs(2, T, 2, 64, seed=T + 1)
        x = (r.to(dtype), w.float(), k.to(dtype), v.to(dtype), a.to(dtype), b.to(dtype), s.float())
        y, state = wkv7_chunked_ref(*x)
        want_y, want_s = wkv7_ref(*x)
        assert y.dtype == dtype and state.dtype == torch.float32
        assert _rel(y, want_y) < tol and _rel(state, want_s) < 1e-4


def test_strong_and_extreme_decays_stay_finite_and_exact():
    # decays anywhere in [0, 1], exact zeros and ones included: the ratios never overflow
    def decay(z):
        w = torch.sigmoid(4 * z) ** 4
        w[..., 0] = 0.0
        w[..., 1] = 1.0
        return w

    x = _inputs(1, 100, 2, 8, seed=7, decay=decay)
    y, s = wkv7_chunked_ref(*x, chunk=32)
    want_y, want_s = _sequential64(*x)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert _rel(y, want_y) < 1e-10 and _rel(s, want_s) < 1e-10


def test_a_split_with_the_state_carried_equals_the_whole():
    r, w, k, v, a, b, s0 = _inputs(2, 77, 2, 8, seed=3)
    whole_y, whole_s = wkv7_chunked_ref(r, w, k, v, a, b, s0)
    cut = 23
    first_y, mid = wkv7_chunked_ref(*(x[:, :cut] for x in (r, w, k, v, a, b)), s0)
    rest_y, end = wkv7_chunked_ref(*(x[:, cut:] for x in (r, w, k, v, a, b)), mid)
    assert _rel(torch.cat([first_y, rest_y], dim=1), whole_y) < 1e-12 and _rel(end, whole_s) < 1e-12


def test_the_state_passed_in_is_not_modified():
    x = _inputs(1, 40, 1, 8, seed=5)
    before = x[-1].clone()
    wkv7_chunked_ref(*x)
    assert torch.equal(x[-1], before)


def test_bad_arguments_are_value_errors():
    x = _inputs(1, 4, 1, 8, seed=0)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        wkv7_chunked_ref(*x, chunk=0)
    with pytest.raises(ValueError, match=r"\[B, T, H, N\]"):
        wkv7_chunked_ref(*(t[0] for t in x[:6]), x[6])
