"""The scalar loops of the CPU kernels: what compilers without GCC/Clang vector types build. The
extension built with -DWKV_SCALAR (build.EXTENSIONS["cpu_scalar"]) runs exactly those loops here, and
must match the references and the vector build."""
import pytest
import torch

from docstream.kernels import build, reference
from tests.helpers import load_or_skip
from tests.kernels.test_compiled import close, inputs4, inputs6, inputs7

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def exts():
    return (load_or_skip(lambda: build.load("cpu_scalar"), "the scalar build of the compiled CPU WKV kernels"),
            load_or_skip(build.load_cpu, "the compiled CPU WKV kernels"))


def test_the_scalar_build_has_no_vector_types(exts):
    scalar, vector = exts
    assert scalar.vector_types is False
    assert vector.vector_types is True  # GCC or Clang here: the other build is the vector one


@pytest.mark.parametrize("N", [64, 24, 13, 1])  # blocks of 32, of 8, and single columns
def test_scalar_wkv6_wkv7_match_the_references(exts, N):
    scalar, vector = exts
    r, w, k, v, a, b, s = inputs7(2, 17, 2, N, seed=N)
    y, s_new = scalar.wkv7(r, w, k, v, a, b, s, None)
    y_ref, s_ref = reference.wkv7_ref(r, w, k, v, a, b, s)
    close(y, y_ref, **TOL, what="wkv7 y")
    close(s_new, s_ref, **TOL, what="wkv7 state")
    close(y, vector.wkv7(r, w, k, v, a, b, s, None)[0], **TOL, what="wkv7 y vs vector build")
    r, k, v, w, u, s = inputs6(2, 17, 2, N, seed=N)
    y, s_new = scalar.wkv6(r, k, v, w, u, s, None)
    y_ref, s_ref = reference.wkv6_ref(r, k, v, w, u, s)
    close(y, y_ref, **TOL, what="wkv6 y")
    close(s_new, s_ref, **TOL, what="wkv6 state")


def test_scalar_wkv7_split_with_carried_state_is_bitwise_whole(exts):
    scalar, _ = exts
    r, w, k, v, a, b, s = inputs7(1, 20, 2, 24, seed=3)
    y, s_end = scalar.wkv7(r, w, k, v, a, b, s, None)
    y1, s1 = scalar.wkv7(*(x[:, :7] for x in (r, w, k, v, a, b)), s, None)
    y2, s2 = scalar.wkv7(*(x[:, 7:] for x in (r, w, k, v, a, b)), s1, None)
    assert torch.equal(torch.cat([y1, y2], 1), y) and torch.equal(s2, s_end)


def test_scalar_wkv4_and_linear_rows(exts):
    scalar, vector = exts
    w, u, k, v, s = inputs4(2, 15, 72, seed=1)
    y, s_new = scalar.wkv4(w, u, k, v, s, None)
    y_ref, s_ref = reference.wkv4_ref(w, u, k, v, s)
    close(y, y_ref, **TOL, what="wkv4 y")
    close(s_new, s_ref, **TOL, what="wkv4 state")
    g = torch.Generator().manual_seed(0)
    for M in (1, 3, 7, 17):
        x, W = torch.randn(M, 37, generator=g), torch.randn(50, 37, generator=g)
        for weight in (W, W.t().contiguous().t()):  # nn.Linear's layout, and a transposed matrix
            close(scalar.linear_rows(x, weight), x @ weight.T, **TOL, what=f"linear_rows M={M}")
            close(vector.linear_rows(x, weight), x @ weight.T, **TOL, what=f"vector linear_rows M={M}")


def test_scalar_linear_i8_matches_the_reference_and_the_vector_build(exts):
    scalar, vector = exts
    g = torch.Generator().manual_seed(1)
    w = torch.randn(50, 37, generator=g)
    scale = w.abs().amax(1) / 127
    q = torch.round(w / scale[:, None]).to(torch.int8)
    for M in (1, 2, 3, 7, 16, 40):  # the few-row tiles, and the BLAS form from 16 rows
        x = torch.randn(M, 37, generator=g)
        want = reference.linear_i8_ref(x, q, scale)
        close(scalar.linear_i8(x, q, scale), want, **TOL, what=f"linear_i8 M={M}")
        close(vector.linear_i8(x, q, scale), want, **TOL, what=f"vector linear_i8 M={M}")
