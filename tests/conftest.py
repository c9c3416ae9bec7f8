"""Fixtures shared by every test folder; the plain helper functions they use are in tests/helpers.py."""
import pytest
import torch

from tests.helpers import make_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A tiny random RWKV-7 checkpoint (:func:`tests.helpers.make_model`), made once; tests only read it."""
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to other work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
