"""The guard of the compiled-kernel tests: a kernel that cannot be built skips its tests, unless
DOCSTREAM_REQUIRE_KERNELS=1 (set by .ci/run), when it fails them with the build error."""
import pytest

from docstream.kernels import build
from tests.helpers import REQUIRE_KERNELS, load_or_skip


def _broken():
    raise build.BuildError("could not build the compiled WKV extension 'x'. To use it, install a C++ compiler",
                           reason="c++: command not found")


def test_a_kernel_that_builds_is_returned(monkeypatch):
    monkeypatch.setenv(REQUIRE_KERNELS, "1")
    module = object()
    assert load_or_skip(lambda: module, "the kernels") is module


def test_a_kernel_that_cannot_build_is_skipped_by_default(monkeypatch):
    monkeypatch.delenv(REQUIRE_KERNELS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="the kernels unavailable: c\\+\\+: command not found"):
        load_or_skip(_broken, "the kernels")


def test_a_kernel_that_cannot_build_fails_when_kernels_are_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_KERNELS, "1")
    with pytest.raises(pytest.fail.Exception) as info:
        load_or_skip(_broken, "the kernels")
    assert "the kernels could not be built" in str(info.value) and "install a C++ compiler" in str(info.value)


def test_ci_requires_the_kernels():
    from tests.helpers import ROOT
    assert f"{REQUIRE_KERNELS}=1" in (ROOT / ".ci" / "run").read_text()
