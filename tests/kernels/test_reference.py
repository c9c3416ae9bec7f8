"""The WKV references against independent formulations of the same maths, and split invariance."""
import pytest
import torch

from docstream.kernels.reference import wkv4_ref, wkv6_ref, wkv7_ref


def _naive_wkv4(w, u, k, v):
    """RWKV-4 WKV written as the explicit weighted average (float64, no max trick), zero state."""
    B, T, C = k.shape
    k, v, w, u = k.double(), v.double(), w.double(), u.double()
    y = torch.empty(B, T, C, dtype=torch.float64)
    for t in range(T):
        i = torch.arange(t)
        weights = torch.exp((t - 1 - i).double()[None, :, None] * w + k[:, :t])  # [B, t, C]
        now = torch.exp(u + k[:, t])
        y[:, t] = ((weights * v[:, :t]).sum(1) + now * v[:, t]) / (weights.sum(1) + now)
    return y


def _matrix_wkv6(r, k, v, w, u, s):
    """RWKV-5.2/6 with explicit per-head matrices: S <- diag(w) S + k^T v, y = r (diag(u) k^T v + S)."""
    B, T, H, N = r.shape
    s = s.clone().double()
    y = torch.empty(B, T, H, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                kv = torch.outer(k[b, t, h].double(), v[b, t, h].double())
                y[b, t, h] = r[b, t, h].double() @ (torch.diag(u[h].double()) @ kv + s[b, h])
                s[b, h] = torch.diag(w[b, t, h].double()) @ s[b, h] + kv
    return y, s


def _matrix_wkv7(r, w, k, v, a, b, s):
    """RWKV-7 as a transition matrix: S <- S (diag(w) + a^T b) + v^T k, y = S r."""
    B, T, H, N = r.shape
    s = s.clone().double()
    y = torch.empty(B, T, H, N, dtype=torch.float64)
    for bb in range(B):
        for h in range(H):
            for t in range(T):
                g = lambda x: x[bb, t, h].double()  # noqa: E731
                transition = torch.diag(g(w)) + torch.outer(g(a), g(b))
                s[bb, h] = s[bb, h] @ transition + torch.outer(g(v), g(k))
                y[bb, t, h] = s[bb, h] @ g(r)
    return y, s


def _inputs7(B, T, H, N, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    kk = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=g)
    w = torch.exp(-0.606531 * torch.rand(B, T, H, N, generator=g))
    return rnd(B, T, H, N), w, rnd(B, T, H, N) * 0.5, rnd(B, T, H, N), -kk, kk * iclr, rnd(B, H, N, N) * 0.1


@pytest.mark.parametrize("T", [1, 7, 40])
def test_wkv4_matches_weighted_average(T):
    g = torch.Generator().manual_seed(T)
    B, C = 2, 5
    w = -torch.exp(torch.randn(C, generator=g))
    u, k, v = torch.randn(C, generator=g), torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g)
    state = torch.zeros(B, 3, C)
    state[:, 2] = -1e30
    y, _ = wkv4_ref(w, u, k, v, state)
    torch.testing.assert_close(y.double(), _naive_wkv4(w, u, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [1, 6])
def test_wkv6_matches_matrix_form(T):
    g = torch.Generator().manual_seed(T)
    B, H, N = 2, 3, 4
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = torch.rand(B, T, H, N, generator=g) * 0.9 + 0.05
    u, s = torch.randn(H, N, generator=g), torch.randn(B, H, N, N, generator=g)
    y, s_out = wkv6_ref(r, k, v, w, u, s)
    y_m, s_m = _matrix_wkv6(r, k, v, w, u, s)
    torch.testing.assert_close(y.double(), y_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_out.double(), s_m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [1, 6])
def test_wkv7_matches_transition_matrix(T):
    r, w, k, v, a, b, s = _inputs7(2, T, 3, 4, seed=T)
    y, s_out = wkv7_ref(r, w, k, v, a, b, s)
    y_m, s_m = _matrix_wkv7(r, w, k, v, a, b, s)
    torch.testing.assert_close(y.double(), y_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_out.double(), s_m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("split", [1, 13, 29])
def test_split_with_carried_state_equals_whole(split):
    T = 30
    r, w, k, v, a, b, s = _inputs7(2, T, 2, 8, seed=split)
    y, s_end = wkv7_ref(r, w, k, v, a, b, s)
    parts = [slice(0, split), slice(split, T)]
    y1, s1 = wkv7_ref(*(x[:, parts[0]] for x in (r, w, k, v, a, b)), s)
    y2, s2 = wkv7_ref(*(x[:, parts[1]] for x in (r, w, k, v, a, b)), s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=0, rtol=0)
    torch.testing.assert_close(s2, s_end, atol=0, rtol=0)

    u = torch.randn(2, 8)
    y6, s6 = wkv6_ref(r, k, v, w, u, s)
    y6a, s6a = wkv6_ref(r[:, :split], k[:, :split], v[:, :split], w[:, :split], u, s)
    y6b, s6b = wkv6_ref(r[:, split:], k[:, split:], v[:, split:], w[:, split:], u, s6a)
    torch.testing.assert_close(torch.cat([y6a, y6b], 1), y6, atol=0, rtol=0)
    torch.testing.assert_close(s6b, s6, atol=0, rtol=0)


def test_references_leave_state_untouched_and_keep_dtype():
    r, w, k, v, a, b, s = _inputs7(1, 5, 2, 4, seed=0)
    before = s.clone()
    y, _ = wkv7_ref(*(x.bfloat16() for x in (r, w, k, v, a, b)), s)
    assert torch.equal(s, before)
    assert y.dtype == torch.bfloat16
    state4 = torch.zeros(1, 3, 4)
    wkv4_ref(-torch.ones(4), torch.zeros(4), k[:, :, 0], v[:, :, 0], state4)
    assert torch.equal(state4, torch.zeros(1, 3, 4))
