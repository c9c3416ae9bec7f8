"""``docstream convert``: BlinkDL .pth <-> Hugging Face folders, checked against this repository's own
layout mappings (tests/model/test_hf_layouts.py), docstream's logits, and the official rwkv package."""
import errno
import json

import pytest
import torch

from docstream.cli import main
from docstream.files import DiskFullError
from docstream.model import load_model
from docstream.model.convert import convert_checkpoint
from docstream.testing.checkpoints import save_random_checkpoint
from tests.model.test_hf_layouts import SEQ, _folder, _same_model, fla_layout, transformers_layout
from tests.official import run_official


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"7": save_random_checkpoint(root / "v7.pth", "7", seed=8, n_layer=3, n_embd=64, head_size=16,
                                        vocab_size=97),
            "4": save_random_checkpoint(root / "v4.pth", "4", seed=9, n_layer=2, n_embd=48, vocab_size=97),
            "6": save_random_checkpoint(root / "v6.pth", "6", seed=10, n_layer=2, n_embd=64, head_size=16,
                                        vocab_size=97)}


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("version, mapping, model_type", [("7", fla_layout, "rwkv7"),
                                                           ("4", transformers_layout, "rwkv")])
def test_to_hf_writes_the_libraries_layout_with_the_same_logits(checkpoints, tmp_path, version, mapping,
                                                                  model_type):
    source = checkpoints[version]
    out = tmp_path / "hf"
    assert main(["convert", str(source), str(out), "--to", "hf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    want = mapping(torch.load(source, weights_only=True))
    got = _tensors(out)
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].shape == t.shape and torch.equal(got[name], t), name
    settings = json.loads((out / "config.json").read_text())
    original = load_model(source)
    assert settings["model_type"] == model_type and settings["vocab_size"] == 97
    assert settings["num_hidden_layers"] == original.config.n_layer
    assert settings["hidden_size"] == original.config.n_embd
    _same_model(load_model(out), original)


def test_an_hf_folder_to_pth_is_loaded_by_the_official_package_with_the_same_logits(checkpoints, tmp_path):
    source = checkpoints["7"]
    sd = torch.load(source, weights_only=True)
    folder = _folder(tmp_path / "fla", fla_layout(sd), {"model_type": "rwkv7"})  # no layer-0 v0/v1/v2
    pth = convert_checkpoint(folder, tmp_path / "back.pth", "pth")
    back = torch.load(pth, weights_only=True)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[name], t) for name, t in sd.items())
    official = run_official(pth, "7", SEQ.tolist())
    ours, _ = load_model(pth).forward(SEQ, all_logits=True)
    for row, result in enumerate(official):
        assert (result["all"] - ours[row]).abs().max().item() <= 1e-4


def test_existing_outputs_other_versions_and_targets_are_refused(checkpoints, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(FileExistsError, match="already exists; choose a new output path"):
        convert_checkpoint(checkpoints["7"], taken, "hf")
    with pytest.raises(ValueError, match="RWKV-6 has no Hugging Face layout here.*Use --to pth"):
        convert_checkpoint(checkpoints["6"], tmp_path / "v6", "hf")
    with pytest.raises(ValueError, match="unknown target layout 'gguf2'"):
        convert_checkpoint(checkpoints["7"], tmp_path / "x", "gguf2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_checkpoint(checkpoints["7"], tmp_path / "no" / "such" / "out", "hf")
    assert main(["convert", str(checkpoints["7"]), str(taken), "--to", "pth"]) != 0
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing half-written anywhere


def test_a_full_disk_leaves_no_folder_and_no_temp(checkpoints, tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFullError, match="no space left on the device"):
        convert_checkpoint(checkpoints["7"], tmp_path / "hf", "hf")
    assert list(tmp_path.iterdir()) == []
