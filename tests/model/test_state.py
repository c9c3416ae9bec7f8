"""The typed State: cloning, moves, batch rows and lossless serialization."""
import pytest
import torch

from docstream.model import State, build_model
from docstream.testing.checkpoints import make_random_checkpoint


@pytest.fixture(scope="module", params=["4", "7"])
def model(request):
    return build_model(make_random_checkpoint(request.param, n_layer=2, n_embd=32, head_size=16, vocab_size=50))


def _state(model, B=3, seed=0):
    toks = torch.randint(0, 50, (B, 6), generator=torch.Generator().manual_seed(seed))
    return model.forward(toks)[1]


def test_layout_is_named_and_batch_first(model):
    s = _state(model)
    c = model.config
    assert s.att_shift.shape == s.ffn_shift.shape == (3, c.n_layer, c.n_embd)
    expect = (3, c.n_layer, 3, c.n_embd) if c.version == "4" else (3, c.n_layer, c.n_head, c.head_size, c.head_size)
    assert s.wkv.shape == expect and s.wkv.dtype == torch.float32
    att, wkv, ffn = s.layer(1)
    assert torch.equal(att, s.att_shift[:, 1]) and torch.equal(wkv, s.wkv[:, 1]) and torch.equal(ffn, s.ffn_shift[:, 1])


def test_initial_state(model):
    s = model.init_state(2)
    assert s.batch_size == 2 and not s.att_shift.any() and not s.ffn_shift.any()
    if model.version == "4":
        assert (s.wkv[:, :, 2] < -1e29).all() and not s.wkv[:, :, :2].any()
    else:
        assert not s.wkv.any()
    # None and the explicit initial state give the same result
    a, _ = model.forward([1, 2, 3])
    b, _ = model.forward([1, 2, 3], model.init_state(1))
    assert torch.equal(a, b)


def test_clone_is_independent(model):
    s = _state(model)
    c = s.clone()
    c.wkv.add_(1.0)
    assert not torch.equal(c.wkv, s.wkv)


def test_dtype_move_keeps_recurrence_fp32(model):
    s = _state(model)
    h = s.to(dtype=torch.bfloat16)
    assert h.att_shift.dtype == torch.bfloat16 and h.ffn_shift.dtype == torch.bfloat16
    assert h.wkv.dtype == torch.float32 and torch.equal(h.wkv, s.wkv)


def test_select_and_stack_round_trip(model):
    s = _state(model, B=4)
    rows = [s.select(i) for i in range(4)]
    assert all(r.batch_size == 1 for r in rows)
    assert State.stack(rows).equal(s)
    assert State.stack([s.select([3, 1]), s.select(slice(0, 1))]).equal(s.select([3, 1, 0]))
    assert s.select(-1).equal(s.select(3))
    with pytest.raises(IndexError):
        s.select(4)
    with pytest.raises(ValueError):
        State.stack([])


def test_selected_row_continues_like_the_batch(model):
    s = _state(model, B=3)
    toks = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(9))
    batch, _ = model.forward(toks, s)
    alone, _ = model.forward(toks[2:], s.select(2))
    torch.testing.assert_close(alone, batch[2:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bytes_round_trip_is_bitwise(model, dtype):
    s = _state(model).to(dtype=dtype)
    back = State.from_bytes(s.to_bytes())
    assert back.equal(s)
    assert back.att_shift.dtype == dtype and back.wkv.dtype == torch.float32
    rows = s.to_rows()
    assert len(rows) == 3 and State.from_rows(rows).equal(s)


def test_restored_state_continues_identically(model):
    s = _state(model, B=1)
    restored = State.from_bytes(s.to_bytes())
    a, _ = model.forward([5, 6, 7], s)
    b, _ = model.forward([5, 6, 7], restored)
    assert torch.equal(a, b)


def test_corrupt_bytes_are_refused(model):
    blob = _state(model).to_bytes()
    with pytest.raises(ValueError, match="DSSTATE1"):
        State.from_bytes(b"garbage" + blob)
    with pytest.raises(ValueError, match="truncated"):
        State.from_bytes(blob[:-10])
    with pytest.raises(ValueError, match="trailing"):
        State.from_bytes(blob + b"\0")


def test_mismatched_parts_are_refused():
    with pytest.raises(ValueError, match="batch size"):
        State("7", torch.zeros(2, 1, 4), torch.zeros(1, 1, 1, 2, 2), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="float32"):
        State("7", torch.zeros(1, 1, 4), torch.zeros(1, 1, 1, 2, 2, dtype=torch.float16), torch.zeros(1, 1, 4))


def test_to_takes_the_dtype_names_used_everywhere_else(model):
    s = _state(model)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        moved = s.to("cpu", name)
        assert moved.dtype == dtype and moved.wkv.dtype == torch.float32
        assert moved.equal(s.to("cpu", dtype))
    with pytest.raises(ValueError, match=r"unknown state dtype 'float8'.*'fp16'"):
        s.to("cpu", "float8")
