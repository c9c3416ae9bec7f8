"""Hugging Face layouts: random BlinkDL checkpoints written in fla's RWKV-7 layout and transformers' RWKV-4
layout (with this file's own mapping, written from those libraries' module names, not the loader's), loaded
back by load_model and compared with the BlinkDL original on logits and hidden states."""
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from docstream.model import load_model
from docstream.model.formats.hf_files import checkpoint_fingerprint
from docstream.testing.checkpoints import save_random_checkpoint

TOL = 1e-5
SEQ = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(0))


def fla_layout(sd, prefix="model.", squeeze=True):
    """BlinkDL RWKV-7 -> fla's RWKV7ForCausalLM names: the module tree of fla.models.rwkv7 (embeddings, layers
    with pre_norm / attn_norm / ffn_norm, attn with r/k/v/o_proj, g_norm and four LoRA(Linear, act, Linear)
    branches; ffn with key / value), nn.Linear weights as [out, in]."""
    out = {}
    for name, t in sd.items():
        if name == "emb.weight":
            out[prefix + "embeddings.weight"] = t
        elif name.startswith("ln_out."):
            out[prefix + "norm." + name.split(".")[1]] = t
        elif name == "head.weight":
            out["lm_head.weight"] = t
        else:
            _, layer, module, *rest = name.split(".")
            rest = ".".join(rest)
            base = f"{prefix}layers.{layer}."
            if module in ("ln0", "ln1", "ln2"):
                out[base + {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}[module] + "." + rest] = t
            elif module == "ffn":
                out[base + "ffn." + rest] = t.flatten() if rest == "x_k" and squeeze else t
            elif layer == "0" and rest in ("v0", "v1", "v2"):
                continue  # fla's layer 0 has no value-residual branch
            elif m := re.fullmatch(r"([wavg])([012])", rest):
                branch, index = m.groups()
                target = {"0": "lora.2.bias", "1": "lora.0.weight", "2": "lora.2.weight"}[index]
                out[base + f"attn.{branch}_lora.{target}"] = t.flatten() if index == "0" else t.t().contiguous()
            else:
                rename = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj",
                          "ln_x": "g_norm"}
                head, _, tail = rest.partition(".")
                key = base + "attn." + (f"{rename[head]}.{tail}" if head in rename else rest)
                # fla keeps the token-shift mixes as [1, 1, C] parameters; k_k and k_a are [C]
                out[key] = t.flatten() if rest in ("k_k", "k_a") and squeeze else t
    return out


def transformers_layout(sd):
    """BlinkDL RWKV-4 -> transformers' RwkvForCausalLM names (rwkv.embeddings, rwkv.blocks.N.{pre_ln, ln1, ln2,
    attention, feed_forward}, time_mix_key/value/receptance, rwkv.ln_out, head)."""
    out = {}
    for name, t in sd.items():
        if name == "head.weight":
            out[name] = t
            continue
        name = name.replace("emb.", "embeddings.").replace(".ln0.", ".pre_ln.")
        name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
        name = re.sub(r"time_mix_([kvr])$", lambda m: "time_mix_" + {"k": "key", "v": "value", "r": "receptance"}[
            m.group(1)], name)
        out["rwkv." + name] = t
    return out


@pytest.fixture(scope="module")
def v7(tmp_path_factory):
    path = save_random_checkpoint(tmp_path_factory.mktemp("v7") / "rwkv7.pth", "7", seed=4, n_layer=3, n_embd=64,
                                  head_size=16, vocab_size=97)
    return path, torch.load(path, weights_only=True), load_model(path)


@pytest.fixture(scope="module")
def v4(tmp_path_factory):
    path = save_random_checkpoint(tmp_path_factory.mktemp("v4") / "rwkv4.pth", "4", seed=5, n_layer=3, n_embd=48,
                                  vocab_size=97)
    return path, torch.load(path, weights_only=True), load_model(path)


def _same_model(loaded, original):
    logits, state = loaded.forward(SEQ, all_logits=True)
    want, want_state = original.forward(SEQ, all_logits=True)
    assert (logits - want).abs().max().item() <= TOL
    for name, part in want_state.parts().items():
        assert (state.parts()[name] - part).abs().max().item() <= TOL, name
    hidden, want_hidden = loaded.forward_hidden(SEQ), original.forward_hidden(SEQ)
    assert (hidden.last - want_hidden.last).abs().max().item() <= TOL


def _folder(root, tensors, config=None, name="model.safetensors"):
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(root / name))
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("prefix, squeeze", [("model.", True), ("model.", False), ("", True)])
def test_fla_rwkv7_folder_loads_as_the_blinkdl_original(v7, tmp_path, prefix, squeeze):
    _, sd, original = v7
    folder = _folder(tmp_path / "fla", fla_layout(sd, prefix, squeeze), {"model_type": "rwkv7"})
    loaded = load_model(folder)
    assert loaded.config.version == "7" and loaded.config == original.config
    _same_model(loaded, original)


def test_a_single_safetensors_file_and_shards_load_alike(v7, tmp_path):
    _, sd, original = v7
    tensors = fla_layout(sd)
    single = tmp_path / "rwkv7.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(single))
    _same_model(load_model(single), original)
    # two shards and their index, as save_pretrained writes a large model
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    for file, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(folder / file))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    _same_model(load_model(folder), original)


def test_tied_embeddings_give_the_head_the_embedding(v7, tmp_path):
    _, sd, _ = v7
    tensors = fla_layout(sd)
    del tensors["lm_head.weight"]
    model = load_model(_folder(tmp_path / "tied", tensors))
    assert torch.equal(model.head.weight, model.emb.weight)


@pytest.mark.parametrize("kind", ["safetensors", "bin-folder", "bin-file"])
def test_transformers_rwkv4_loads_as_the_blinkdl_original(v4, tmp_path, kind):
    _, sd, original = v4
    tensors = transformers_layout(sd)
    if kind == "safetensors":
        path = _folder(tmp_path / "hf", tensors, {"model_type": "rwkv"})
    else:
        folder = tmp_path / "hf"
        folder.mkdir()
        torch.save(tensors, folder / "pytorch_model.bin")
        path = folder if kind == "bin-folder" else folder / "pytorch_model.bin"
    loaded = load_model(path)
    assert loaded.config.version == "4" and loaded.config == original.config
    _same_model(loaded, original)


def test_a_folder_fingerprint_covers_every_weight_file(v7, tmp_path):
    _, sd, _ = v7
    folder = _folder(tmp_path / "fla", fla_layout(sd), {"model_type": "rwkv7"})
    first = checkpoint_fingerprint(folder)
    assert first == checkpoint_fingerprint(folder) and len(first) == 64
    (folder / "config.json").write_text(json.dumps({"model_type": "rwkv7", "note": 1}))
    second = checkpoint_fingerprint(folder)
    tensors = fla_layout(sd)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    assert len({first, second, checkpoint_fingerprint(folder)}) == 3


def test_bad_folders_and_files_are_refused_by_name(v7, tmp_path):
    _, sd, _ = v7
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no model weights: expected one of model.safetensors"):
        load_model(empty)
    other = _folder(tmp_path / "llama", {"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="is not an RWKV checkpoint"):
        load_model(other)
    stray = fla_layout(sd)
    stray["model.layers.1.attn.q_norm.weight"] = torch.zeros(4)
    with pytest.raises(ValueError, match="fla RWKV7ForCausalLM layout.*does not match the RWKV-7 layout|q_norm"):
        load_model(_folder(tmp_path / "stray", stray))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(ValueError, match="shard 'missing.safetensors' named by its index is missing"):
        load_model(broken)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="is not a readable weights file"):
        load_model(truncated)
    with pytest.raises(FileNotFoundError, match="a .safetensors file or a Hugging Face model folder"):
        load_model(tmp_path / "nowhere" / "model")


def test_a_run_streams_with_a_model_folder_and_resumes(tmp_path):
    from docstream.cli import main
    from docstream.store.reader import read_run_config
    from docstream.stream.run import run
    from tests.helpers import make_model, nested_corpus, run_config
    from tests.stream.tables import assert_same_outputs, sorted_tables

    pth = make_model(tmp_path)
    folder = _folder(tmp_path / "fla", fla_layout(torch.load(pth, weights_only=True)), {"model_type": "rwkv7"})
    corpus = nested_corpus(tmp_path / "corpus", 5, seed=2, max_words=120)
    outs = {name: tmp_path / f"out-{name}" for name in ("pth", "folder")}
    run(run_config(pth, corpus, outs["pth"]))
    summary = run(run_config(folder, corpus, outs["folder"]))
    assert summary.tokens > 0
    assert read_run_config(outs["folder"])["identity"]["model_fingerprint"] == checkpoint_fingerprint(folder)
    tables = {name: sorted_tables(out) for name, out in outs.items()}
    for table in (t for run_tables in tables.values() for t in run_tables.values()):
        for row in table:
            row.pop("model_fingerprint", None)  # each run records its own model's: the file's or the folder's
    assert_same_outputs(tables["folder"], tables["pth"])
    again = run(run_config(folder, corpus, outs["folder"]))  # the same folder: a resume with nothing left
    assert again.tokens == 0
    assert main(["info", "--model", str(folder)]) == 0
