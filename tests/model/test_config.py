"""ModelConfig.new: the sizes of a new model, in the vocabulary the loader reads checkpoints with."""
import pytest

from docstream.model.config import LORA_KEYS, ModelConfig, default_dim_ffn, default_lora
from docstream.model.v7 import RWKV7


def test_new_fills_rwkv_lm_defaults():
    cfg = ModelConfig.new("7", n_layer=2, n_embd=768, vocab_size=300, head_size=64)
    assert (cfg.dim_att, cfg.dim_ffn, cfg.n_head) == (768, 3072, 12)
    assert cfg.lora == {"decay": 64, "iclr": 64, "value": 32, "gate": 128}
    assert ModelConfig.new("6", n_layer=1, n_embd=768, vocab_size=9).dim_ffn == 2688 == default_dim_ffn("6", 768)
    v4 = ModelConfig.new("4", n_layer=1, n_embd=32, vocab_size=9)
    assert (v4.head_size, v4.lora) == (0, {})


def test_new_takes_overrides_under_the_model_names():
    cfg = ModelConfig.new("7", n_layer=1, n_embd=64, vocab_size=50, head_size=16, dim_ffn=100,
                          lora={"iclr": 24})
    assert cfg.dim_ffn == 100
    assert cfg.lora == {**default_lora("7", 64), "iclr": 24}
    model = RWKV7(cfg)
    assert model.blocks[0].att.a1.shape == (64, 24) and model.blocks[0].ffn.key.weight.shape == (100, 64)


@pytest.mark.parametrize("version, lora", [("7", {"w": 8}), ("7", {"mix": 8}), ("6", {"gate": 8}),
                                           ("4", {"decay": 8})])
def test_new_rejects_a_key_of_another_vocabulary(version, lora):
    with pytest.raises(ValueError, match=repr(next(iter(lora)))):
        ModelConfig.new(version, n_layer=1, n_embd=64, vocab_size=50, head_size=16, lora=lora)


@pytest.mark.parametrize("kwargs", [dict(version="8"), dict(head_size=48), dict(n_layer=0),
                                    dict(lora={"decay": 0})])
def test_new_rejects_bad_sizes(kwargs):
    args = {"version": "7", "n_layer": 1, "n_embd": 64, "vocab_size": 50, "head_size": 16, **kwargs}
    with pytest.raises(ValueError):
        ModelConfig.new(args.pop("version"), **args)


def test_config_names_every_low_rank_width_of_its_version():
    """A config missing a width, or naming one in another vocabulary, fails where it is made, not in
    the model's constructor with a KeyError."""
    sizes = dict(version="7", n_layer=1, n_embd=32, dim_att=32, dim_ffn=64, vocab_size=9, head_size=16)
    with pytest.raises(ValueError, match="iclr"):
        ModelConfig(**sizes, lora={"w": 8, "a": 8, "v": 8, "g": 8})
    with pytest.raises(ValueError, match="gate"):
        ModelConfig(**sizes, lora={"decay": 8, "iclr": 8, "value": 8})
    assert ModelConfig(**sizes, lora=dict.fromkeys(LORA_KEYS["7"], 8)).lora["gate"] == 8
