"""The loader refuses weights that are NaN or inf, naming the file, the tensor and the count."""
from __future__ import annotations

import pytest
import torch

from docstream.model import load_model
from docstream.testing.checkpoints import make_random_checkpoint

SPEC = dict(n_layer=2, n_embd=32, head_size=16, vocab_size=61, lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16})
TARGET = "blocks.1.ffn.key.weight"


def _save(tmp_path, name, edit=None):
    sd = make_random_checkpoint("7", seed=2, **SPEC)
    if edit is not None:
        edit(sd)
    path = tmp_path / name
    torch.save(sd, path)
    return path


def _poison(value, count):
    def edit(sd):
        sd[TARGET].view(-1)[:count] = value
    return edit


@pytest.mark.parametrize("value, count, words", [(float("nan"), 1, "1 NaN and 0 inf"),
                                                  (float("inf"), 3, "0 NaN and 3 inf")])
def test_non_finite_weights_are_refused_naming_file_tensor_and_count(tmp_path, value, count, words):
    path = _save(tmp_path, "diverged.pth", _poison(value, count))
    with pytest.raises(ValueError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and repr(TARGET) in message and words in message
    assert "non-finite" in message


def test_the_first_bad_tensor_is_named(tmp_path):
    def edit(sd):
        sd["blocks.0.att.key.weight"][0, 0] = float("nan")
        sd[TARGET][0, 0] = float("nan")
    with pytest.raises(ValueError, match="'blocks.0.att.key.weight' has 1 NaN"):
        load_model(_save(tmp_path, "two.pth", edit))


def test_weights_beyond_fp16_range_are_refused_only_in_fp16(tmp_path):
    path = _save(tmp_path, "big.pth", _poison(1e6, 2))  # finite in fp32 and bf16, inf in fp16
    load_model(path)
    load_model(path, dtype="bf16")
    with pytest.raises(ValueError) as err:
        load_model(path, dtype="fp16")
    message = str(err.value)
    assert str(path) in message and repr(TARGET) in message and "0 NaN and 2 inf" in message
    assert "fp16" in message and "bf16 or fp32" in message


def test_finite_weights_load(tmp_path):
    model = load_model(_save(tmp_path, "fine.pth"), dtype="fp16")
    assert model.config.vocab_size == 61
