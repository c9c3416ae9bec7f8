"""``docstream convert``: BlinkDL .pth <-> Hugging Face folders, checked against this repository's own
layout mappings (tests/model/test_hf_layouts.py), docstream's logits, and the official rwkv package."""
import errno
import json

import numpy as np
import pytest
import torch

from docstream.cli import main
from docstream.files import DiskFullError
from docstream.model import load_model
from docstream.model.formats.convert import convert_checkpoint
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


def test_gguf_reads_back_with_llama_cpp_names_shapes_and_metadata(tmp_path):
    import gguf

    from docstream.tokenizer import default_world_vocab_path
    from docstream.tokenizer.world import parse_world_vocab

    source = save_random_checkpoint(tmp_path / "w.pth", "7", seed=3, n_layer=2, n_embd=64, head_size=16,
                                    vocab_size=65536, lora={"decay": 16, "iclr": 8, "value": 8, "gate": 16})
    out = tmp_path / "model.gguf"
    assert main(["convert", str(source), str(out), "--to", "gguf"]) == 0
    sd = torch.load(source, weights_only=True)
    reader = gguf.GGUFReader(str(out))

    def field(key):
        f = reader.get_field(key)
        return f.contents() if f is not None else None

    assert field("general.architecture") == "rwkv7"
    assert field("rwkv7.block_count") == 2 and field("rwkv7.embedding_length") == 64
    assert field("rwkv7.wkv.head_size") == 16 and field("rwkv7.feed_forward_length") == 256
    assert field("rwkv7.attention.decay_lora_rank") == 16 and field("rwkv7.attention.iclr_lora_rank") == 8
    assert field("rwkv7.attention.value_residual_mix_lora_rank") == 8
    assert field("rwkv7.attention.gate_lora_rank") == 16
    assert field("tokenizer.ggml.model") == "rwkv" and field("tokenizer.ggml.eot_token_id") == 261
    tokens = field("tokenizer.ggml.tokens")
    vocab = parse_world_vocab(default_world_vocab_path().read_bytes(), "world")
    assert len(tokens) == 65536 and tokens[0] == "<s>" and tokens[-1] == "[PAD65535]"
    assert tokens[261] == repr(vocab[261])[2:-1] == "\\n\\n" and tokens[33] == " " and tokens[65] == "@"
    got = {t.name: np.asarray(t.data) for t in reader.tensors}
    # written here from llama.cpp's names (convert_hf_to_gguf.py, Rwkv7Model), not the writer's tables
    want = {"token_embd.weight": sd["emb.weight"], "token_embd_norm.weight": sd["blocks.0.ln0.weight"],
            "token_embd_norm.bias": sd["blocks.0.ln0.bias"], "output_norm.weight": sd["ln_out.weight"],
            "output_norm.bias": sd["ln_out.bias"], "output.weight": sd["head.weight"]}
    for i in range(2):
        b, p = f"blk.{i}.", f"blocks.{i}."
        want[b + "attn_norm.weight"], want[b + "attn_norm_2.bias"] = sd[p + "ln1.weight"], sd[p + "ln2.bias"]
        want[b + "time_mix_lerp_fused.weight"] = torch.stack([sd[p + f"att.x_{m}"] for m in "rwkvag"])
        want[b + "time_mix_w1.weight"] = sd[p + "att.w1"].t()
        want[b + "time_mix_g2.weight"] = sd[p + "att.g2"].t()
        want[b + "time_mix_a0.weight"] = sd[p + "att.a0"].flatten()
        want[b + "time_mix_v1.weight"] = sd[p + ("att.a1" if i == 0 else "att.v1")].t()
        want[b + "time_mix_r_k.weight"] = sd[p + "att.r_k"].flatten()
        want[b + "time_mix_receptance.weight"] = sd[p + "att.receptance.weight"]
        want[b + "time_mix_ln.bias"] = sd[p + "att.ln_x.bias"]
        want[b + "channel_mix_lerp_k.weight"] = sd[p + "ffn.x_k"].flatten()
        want[b + "channel_mix_value.weight"] = sd[p + "ffn.value.weight"]
    for name, t in want.items():
        assert name in got, name
        assert got[name].shape == tuple(t.shape) and np.array_equal(got[name], t.numpy()), name
    assert len(got) == 6 + 2 * 28  # every tensor of both blocks, nothing else


def test_gguf_needs_rwkv7_and_a_world_vocabulary(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="GGUF export is for RWKV-7.*RWKV-4"):
        convert_checkpoint(checkpoints["4"], tmp_path / "v4.gguf", "gguf")
    bpe = tmp_path / "tokenizer.json"
    bpe.write_text("{}")
    with pytest.raises(ValueError, match="is not a World vocabulary"):
        convert_checkpoint(checkpoints["7"], tmp_path / "v7.gguf", "gguf", tokenizer=bpe)
    with pytest.raises(ValueError, match="only 97 embeddings: it was trained with another tokenizer"):
        convert_checkpoint(checkpoints["7"], tmp_path / "v7.gguf", "gguf")
    with pytest.raises(ValueError, match="a tokenizer only applies to --to gguf"):
        convert_checkpoint(checkpoints["7"], tmp_path / "x", "pth", tokenizer=bpe)
    assert main(["convert", str(checkpoints["7"]), str(tmp_path / "x"), "--to", "hf", "--tokenizer", str(bpe)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_a_tied_head_is_written_as_its_own_tensor(checkpoints, tmp_path):
    # a folder without lm_head (tied embeddings) loads with head = embedding; safetensors refuses shared tensors
    sd = torch.load(checkpoints["7"], weights_only=True)
    tensors = fla_layout(sd)
    del tensors["lm_head.weight"]
    out = convert_checkpoint(_folder(tmp_path / "tied", tensors, {"model_type": "rwkv7"}), tmp_path / "hf", "hf")
    written = _tensors(out)
    assert torch.equal(written["lm_head.weight"], sd["emb.weight"])
    assert torch.equal(written["model.embeddings.weight"], sd["emb.weight"])
