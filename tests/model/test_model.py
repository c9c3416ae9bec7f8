"""Forward contract, hidden states, dtypes and loader errors on tiny random checkpoints."""
import pytest
import torch

from docstream.model import State, build_model, load_model
from docstream.testing.checkpoints import make_random_checkpoint, save_random_checkpoint
from tests.blas_variation import vary_rounding_by_row_count

# widths are multiples of 16, as in every released model: elementwise ops then rarely take torch's
# scalar tail loop, whose rounding may differ from the vector loop
SPECS = {
    "4": dict(n_layer=2, n_embd=32, vocab_size=61),
    "5.2": dict(n_layer=2, n_embd=32, head_size=16, vocab_size=61),
    "6": dict(n_layer=2, n_embd=32, head_size=16, vocab_size=61, lora={"mix": 16, "decay": 16}),
    "7": dict(n_layer=2, n_embd=32, head_size=16, vocab_size=61, lora={"decay": 16, "iclr": 16, "value": 16, "gate": 16}),
}


@pytest.fixture(scope="module", params=sorted(SPECS))
def model(request):
    return build_model(make_random_checkpoint(request.param, seed=3, **SPECS[request.param]))


def _tokens(model, B, T, seed=0):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_state_passed_in_is_not_modified(model):
    toks = _tokens(model, 2, 6)
    _, state = model.forward(toks)
    before = state.clone()
    model.forward(toks, state)
    assert state.equal(before)


# Different batchings send different row counts through the BLAS, whose rounding may then differ on
# AVX-512 and ARM CPUs (this AVX2 machine happens to agree bitwise): the promise everywhere is agreement
# to float32 rounding, FORWARD_TOL, as the README says. The same computation repeated is bitwise equal.
FORWARD_TOL = dict(atol=1e-5, rtol=1e-5)


def _assert_states_close(got, want):
    assert got.version == want.version
    for name, part in want.parts().items():
        torch.testing.assert_close(got.parts()[name], part, **FORWARD_TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("blas", ["this machine's", "rounding by row count"])
def test_rows_are_independent_of_batch_companions(model, blas, monkeypatch):
    if blas == "rounding by row count":
        vary_rounding_by_row_count(monkeypatch)
    toks = _tokens(model, 3, 9, seed=1)
    _, s0 = model.forward(_tokens(model, 3, 4, seed=2))
    batch_logits, batch_state = model.forward(toks, s0, all_logits=True)
    differs = False
    for row in range(3):
        alone, alone_state = model.forward(toks[row:row + 1], s0.select(row), all_logits=True)
        torch.testing.assert_close(batch_logits[row:row + 1], alone, **FORWARD_TOL)
        _assert_states_close(batch_state.select(row), alone_state)
        differs |= not torch.equal(batch_logits[row:row + 1], alone)
    # under the stand-in BLAS the rows do differ in their last bits: the tolerance above is what holds
    assert differs == (blas == "rounding by row count")
    # the same computation repeated is bitwise equal on every CPU
    again_logits, again_state = model.forward(toks, s0, all_logits=True)
    assert torch.equal(again_logits, batch_logits) and again_state.equal(batch_state)


@pytest.mark.parametrize("split", [1, 7, 19])
def test_any_split_gives_the_same_logits(model, split):
    toks = _tokens(model, 2, 20, seed=split)
    whole, whole_state = model.forward(toks, all_logits=True)
    first, state = model.forward(toks[:, :split], all_logits=True)
    second, state = model.forward(toks[:, split:], state, all_logits=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, **FORWARD_TOL)
    _assert_states_close(state, whole_state)


def test_token_by_token_equals_whole(model):
    toks = _tokens(model, 2, 12, seed=4)
    whole, whole_state = model.forward(toks, all_logits=True)
    state, steps = None, []
    for t in range(12):
        logits, state = model.forward(toks[:, t:t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), whole, **FORWARD_TOL)
    _assert_states_close(state, whole_state)


def test_hidden_states_feed_the_head(model):
    toks = _tokens(model, 2, 5)
    hidden = model.forward_hidden(toks, all_layers=True)
    logits, _ = model.forward(toks, all_logits=True)
    assert hidden.last.shape == (2, 5, model.config.n_embd)
    assert len(hidden.layers) == model.config.n_layer
    torch.testing.assert_close(model.head(hidden.last), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.ln_out(hidden.layers[-1]), hidden.last)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_tracks_fp32(dtype):
    # deep enough (7 layers) that fp16 rescaling of RWKV-4/5/6 kicks in after layer 6
    for version in SPECS:
        spec = dict(SPECS[version], n_layer=7)
        sd = make_random_checkpoint(version, seed=5, **spec)
        ref, half = build_model(sd), build_model(sd, dtype=dtype)
        assert half.config.rescale_every == (6 if dtype == "fp16" and version != "7" else 0)
        toks = _tokens(ref, 2, 16)
        want, _ = ref.forward(toks, all_logits=True)
        got, state = half.forward(toks, all_logits=True)
        assert got.dtype == torch.float32 and state.wkv.dtype == torch.float32
        assert state.att_shift.dtype == half.dtype
        err = (got - want).abs().max() / want.abs().max()
        assert err < 0.05, f"v{version} {dtype}: relative error {err:.3f}"
        # the argmax agrees for nearly every position
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
        assert agree >= 0.9, f"v{version} {dtype}: argmax agreement {agree:.2f}"


def test_state_from_another_model_is_refused(model):
    other = State("7" if model.version != "7" else "4", *model.init_state(1).parts().values())
    with pytest.raises(ValueError, match="state does not fit"):
        model.forward([1, 2], other)


def test_nested_lists_are_a_batch(model):
    toks = _tokens(model, 2, 5, seed=11)
    want, want_state = model.forward(toks)
    got, got_state = model.forward(toks.tolist())
    assert torch.equal(got, want) and got_state.equal(want_state)
    # one row as a nested list continues a carried state, like the tensor does
    tensor_logits, _ = model.forward(toks[:1, :2], want_state.select(0))
    list_logits, _ = model.forward([toks[0, :2].tolist()], want_state.select(0))
    assert torch.equal(list_logits, tensor_logits)


@pytest.mark.parametrize("bad", [[], [[]], [[1, 2], [3]], [-1], [10**6], ["a"], [1.5]])
def test_bad_tokens_are_refused(model, bad):
    with pytest.raises(ValueError):
        model.forward(torch.tensor(bad) if bad and isinstance(bad[0], int) else bad)


def test_loader_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(missing)

    good = save_random_checkpoint(tmp_path / "good.pth", "7", **SPECS["7"])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pth"):
        load_model(truncated)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pth"):
        load_model(garbage)

    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match="not an RWKV checkpoint"):
        load_model(other)

    sd = make_random_checkpoint("7", **SPECS["7"])
    del sd["blocks.1.att.k_k"]
    broken = tmp_path / "broken.pth"
    torch.save(sd, broken)
    with pytest.raises(ValueError, match="k_k"):
        load_model(broken)

    sd = make_random_checkpoint("4", **SPECS["4"])
    sd = {k.replace("time_mix_k", "time_mix_q"): v for k, v in sd.items()}
    odd = tmp_path / "odd.pth"
    torch.save(sd, odd)
    with pytest.raises(ValueError, match="unknown RWKV layout"):
        load_model(odd)

    with pytest.raises(ValueError, match="dtype"):
        load_model(good, dtype="fp8")
    with pytest.raises(ValueError, match="backend"):
        load_model(good, backend="tpu")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_loaded_weights_are_the_models_own_memory(tmp_path, dtype):
    """A checkpoint is read with mmap; weights whose dtype already matches are copied, not left as
    pages of the file (which would be read from disk mid-stream) nor shared with the state dict."""
    from docstream.model.loader import read_checkpoint
    stored = torch.float32 if dtype == "fp32" else torch.bfloat16
    path = save_random_checkpoint(tmp_path / "m.pth", "7", dtype=stored, **SPECS["7"])
    sd = read_checkpoint(path)
    model = build_model(sd, dtype=dtype)
    shared = {name for name, p in model.state_dict().items()
              if p.untyped_storage().data_ptr() == sd[name].untyped_storage().data_ptr()}
    assert not shared
    before = sd["emb.weight"].clone()
    with torch.no_grad():
        model.emb.weight.add_(1)
    assert torch.equal(sd["emb.weight"], before)


def test_parameters_round_trip_to_the_checkpoint_layout():
    sd = make_random_checkpoint("6", **SPECS["6"])
    model = build_model(sd)
    out = model.state_dict()
    assert set(out) == set(sd)
    for name, tensor in sd.items():
        assert out[name].shape == tensor.shape, name
        assert torch.equal(out[name], tensor), name


@pytest.mark.parametrize("batch", [1, 3])
def test_step_matches_forward_to_float_tolerance(model, batch):
    toks = _tokens(model, batch, 6, seed=8)
    _, state = model.forward(toks[:, :5])
    want, want_state = model.forward(toks[:, 5:], state)
    got, got_state = model.step(toks[:, 5], state)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_state.wkv, want_state.wkv, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one token per sequence"):
        model.step(toks[:, :2], state)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_inplace_step_equals_step_and_reuses_the_state(model, backend):
    model.set_backend(backend)
    try:
        toks = _tokens(model, 3, 8, seed=9)
        _, state = model.forward(toks[:, :4])
        own = state.clone()
        tensors = [t.data_ptr() for t in own.parts().values()]
        for t in range(4, 8):
            want, state = model.step(toks[:, t], state)
            got, same = model.step(toks[:, t], own, inplace=True)
            assert same is own and [x.data_ptr() for x in own.parts().values()] == tensors
            assert torch.equal(got, want)
            assert own.equal(state)
    finally:
        model.set_backend("auto")


def test_inplace_step_refuses_a_state_it_would_have_to_convert(model):
    _, state = model.forward(_tokens(model, 1, 3))
    with pytest.raises(ValueError, match="model's device and dtype"):
        model.step([1], state.to(dtype=torch.float16), inplace=True)


@pytest.mark.parametrize("batch", [1, 2, 5, 6, 8, 9, 16, 17, 24, 33, 64])
def test_step_matrix_products_match_the_stable_path(batch):
    """The compiled few-row kernel (linear_rows) used by CPU decoding steps: both of its forms (dot
    products below 6 rows, packed panels from 6), odd widths, and weights stored [in, out] (LoRA)."""
    from docstream.kernels import build
    from docstream.kernels.dispatch import linear_rows_kernel
    from docstream.model.base import _STEP_KERNEL, matmul
    ext = build.load_cpu()
    g = torch.Generator().manual_seed(batch)
    for n_in, n_out in ((32, 61), (13, 7), (768, 96), (1, 5), (64, 200)):
        x = torch.randn(batch, n_in, generator=g)
        for w in (torch.randn(n_in, n_out, generator=g), torch.randn(n_out, n_in, generator=g).T):
            want = x.double() @ w.double()
            tol = dict(atol=1e-6 * want.abs().max().item(), rtol=1e-5)  # fp32 sums of up to 768 products
            torch.testing.assert_close(ext.linear_rows(x, w.T).double(), want, **tol)
            torch.testing.assert_close(matmul(x, w).double(), want, **tol)
            # as inside model.step of an fp32 CPU model with backend "auto"
            reset = _STEP_KERNEL.set(linear_rows_kernel("auto", x.device, x.dtype))
            try:
                stepped = matmul(x, w)
            finally:
                _STEP_KERNEL.reset(reset)
            torch.testing.assert_close(stepped.double(), want, **tol)
            assert torch.equal(stepped, ext.linear_rows(x, w.T))
    # any strides of x too (a column slice, a transposed view)
    x = torch.randn(40, batch, generator=g)
    weight = torch.randn(7, 30, generator=g)
    torch.testing.assert_close(ext.linear_rows(x[:30].T, weight), x[:30].T @ weight.T)


def test_panel_rows_do_not_depend_on_how_many_rows_share_the_product():
    """From 6 rows on, every row of linear_rows is one FMA chain in the same order, wherever the row
    sits and however many rows come with it (panels of 16 and of 8 alike)."""
    from docstream.kernels import build
    ext = build.load_cpu()
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(64, 100, generator=g), torch.randn(50, 100, generator=g)
    full = ext.linear_rows(x, weight)
    for rows in range(6, 65):
        assert torch.equal(ext.linear_rows(x[:rows], weight), full[:rows]), rows
        assert torch.equal(ext.linear_rows(x[64 - rows:], weight), full[64 - rows:]), rows
