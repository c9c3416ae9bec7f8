"""Strategy strings and int8 weights (docstream.model.strategy, docstream.model.quant, linear_i8).

The layer plan is checked against the official rwkv package's own allotment; every strategy's logits and
state against the single-device fp32 model within a stated tolerance; the compiled int8 products against
their reference. GPU strategies are marked and skip without a GPU.
"""
import json
import subprocess
import sys

import pytest
import torch

from docstream.kernels import linear_i8, linear_i8_ref
from docstream.model import load_model
from docstream.model.quant import Int8Embedding, Int8Linear, quantize_rows, weight_bytes
from docstream.model.strategy import parse_strategy, plan_strategy
from docstream.testing.checkpoints import save_random_checkpoint
from tests.official import official_env

T, SPLIT = 29, 11
CASES = {
    "4": dict(n_layer=3, n_embd=48, vocab_size=131, dim_ffn=136),
    "5.2": dict(n_layer=3, n_embd=64, head_size=16, vocab_size=113),
    "6": dict(n_layer=3, n_embd=64, head_size=16, vocab_size=127),
    "7": dict(n_layer=3, n_embd=64, head_size=16, vocab_size=109),
}
#: max |logit difference| / max |logit| against the fp32 model, per kind of strategy. int8 keeps a
#: weight within half a step (max|row| / 254); bf16 keeps 8 bits of mantissa.
TOL = {"fp32": 1e-5, "i8": 0.05, "bf16": 0.05}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    version = request.param
    path = save_random_checkpoint(tmp_path_factory.mktemp(f"v{version}") / "model.pth", version, seed=5,
                                  **CASES[version])
    return version, path


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(1))


# -- the plan ---------------------------------------------------------------------------------------

_OFFICIAL_PLAN = r"""
import contextlib, io, json, sys
from rwkv.model import RWKV
out = {}
for strategy in json.loads(sys.argv[2]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            RWKV(model=sys.argv[1], strategy=strategy)
        except Exception:
            pass  # the plan is printed before the weights are converted
    line = [l for l in text.getvalue().splitlines() if l.startswith("0-")][0]
    out[strategy] = [p.split("-")[2:4] for p in line.split()]
print(json.dumps(out))
"""


def test_plan_is_the_official_packages(tmp_path):
    path = save_random_checkpoint(tmp_path / "v4.pth", "4", seed=1, n_layer=5, n_embd=32, vocab_size=50)
    strategies = ["cpu fp32", "cpu fp32 *2 -> cpu bf16", "cpu fp32 -> cpu bf16", "cpu fp32 -> cpu bf16 -> cpu fp16",
                  "cpu fp32 *9 -> cpu bf16", "cpu fp32 *1 -> cpu bf16 -> cpu fp16 *1", "cpu fp32i8 *4 -> cpu bf16",
                  "cpu bf16 *6 -> cpu fp32", "cpu fp16 -> cpu fp32 *2 -> cpu bf16"]
    proc = subprocess.run([sys.executable, "-c", _OFFICIAL_PLAN, str(path.with_suffix("")), json.dumps(strategies)],
                          capture_output=True, text=True, env=official_env("4"), timeout=300, check=True)
    official = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    for strategy in strategies:
        ours = [[names[p.dtype], "uint8" if p.int8 else names[p.dtype]] for p in plan_strategy(strategy, 5)]
        assert ours == official[strategy], strategy


@pytest.mark.parametrize("text, message", [
    ("", "non-empty"), ("gpu fp16", "cannot read stage 'gpu fp16'"), ("mps fp16", "'mps' is not supported"),
    ("cuda fp16 *10+", "Streamed layers"), ("cpu fp16i4", "Only i8"), ("cpu fp32 *0 -> cpu bf16", "no layers"),
    ("cpu fp64", "DTYPE fp32, bf16 or fp16"), ("cpu fp32 -> ", "cannot read stage ''"),
])
def test_bad_strategies_are_refused_by_name(text, message):
    with pytest.raises(ValueError, match=message):
        parse_strategy(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_cuda_strategy_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        plan_strategy("cuda fp16 *1 -> cpu fp32", 2)


def test_strategy_and_device_are_not_both_given(checkpoint):
    _, path = checkpoint
    with pytest.raises(ValueError, match="either a strategy or a device"):
        load_model(path, dtype="bf16", strategy="cpu fp32")


# -- the model under a strategy ---------------------------------------------------------------------

STRATEGIES = ["cpu fp32", "cpu fp32i8", "cpu fp32 *1 -> cpu fp32i8", "cpu fp32i8 *2 -> cpu fp32",
              "cpu bf16 *1 -> cpu fp32", "cpu fp32 *2 -> cpu bf16i8"]


def _kind(strategy: str) -> str:
    return "bf16" if "bf16" in strategy else "i8" if "i8" in strategy else "fp32"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_the_single_device_logits(checkpoint, strategy):
    version, path = checkpoint
    reference = load_model(path)
    model = load_model(path, strategy=strategy)
    tokens = _tokens(model.config.vocab_size)
    want, want_state = reference.forward(tokens, all_logits=True)
    got, state = model.forward(tokens, all_logits=True)
    assert got.dtype == torch.float32 and state.wkv.dtype == torch.float32
    tol = TOL[_kind(strategy)] * float(want.abs().max())
    assert float((got - want).abs().max()) <= tol
    assert float((state.wkv - want_state.wkv).abs().max()) <= TOL[_kind(strategy)] * float(want_state.wkv.abs().max())


@pytest.mark.parametrize("strategy", ["cpu fp32i8", "cpu fp32 *2 -> cpu fp32i8", "cpu bf16 *1 -> cpu fp32"])
def test_a_strategy_model_agrees_with_itself_split_and_token_by_token(checkpoint, strategy):
    _, path = checkpoint
    model = load_model(path, strategy=strategy)
    tokens = _tokens(model.config.vocab_size)
    whole, state = model.forward(tokens)
    _, mid = model.forward(tokens[:, :SPLIT])
    split, split_state = model.forward(tokens[:, SPLIT:], mid)
    stepped = None
    step_state = model.init_state(tokens.shape[0])
    for t in range(T):
        stepped, step_state = model.step(tokens[:, t], step_state, inplace=True)
    scale = float(whole.abs().max())
    # the state is kept in the first stage's dtype: bf16 rounds the fp32 stage's shifts at the split
    tol = (5e-3 if "bf16" in strategy else 1e-5) * scale
    assert float((split - whole).abs().max()) <= tol
    assert float((split_state.wkv - state.wkv).abs().max()) <= tol
    assert float((stepped - whole).abs().max()) <= max(tol, 1e-4 * scale)


def test_int8_layers_keep_int8_weights_and_take_less_memory(checkpoint):
    version, path = checkpoint
    full = load_model(path)
    model = load_model(path, strategy="cpu fp32i8")
    quantized = [m for m in model.modules() if isinstance(m, Int8Linear)]
    linears = [m for m in full.modules() if isinstance(m, torch.nn.Linear)]
    assert len(quantized) == len(linears) > 0  # every matrix, the head included
    assert all(m.weight_i8.dtype == torch.int8 for m in quantized)
    assert isinstance(model.emb, Int8Embedding) and model.emb.weight_i8.dtype == torch.int8
    matrix_bytes = sum(m.weight.numel() * 4 for m in linears)
    assert weight_bytes(full) - weight_bytes(model) >= 0.7 * matrix_bytes  # 4 bytes -> 1 byte (+ scales)
    head = model.get_submodule("head")
    assert float((head.dequantized() - full.head.weight).abs().max()) <= float(head.scale.max()) / 2 + 1e-6


def test_mixed_strategy_places_layers_and_refuses_training(checkpoint):
    _, path = checkpoint
    model = load_model(path, strategy="cpu bf16 *2 -> cpu fp32i8")
    assert model.blocks[0].att.key.weight.dtype == torch.bfloat16 and model.emb.weight.dtype == torch.bfloat16
    assert model.dtype == torch.bfloat16 and model.init_state(1).dtype == torch.bfloat16
    assert isinstance(model.blocks[2].att.key, Int8Linear) and isinstance(model.head, Int8Linear)
    assert model.strategy == "cpu bf16 *2 -> cpu fp32i8"
    with pytest.raises(ValueError, match="for inference"):
        model.forward_train(_tokens(model.config.vocab_size))
    # outputs live where the state does, in its dtype, whatever place computed them
    hidden = model.forward_hidden(_tokens(model.config.vocab_size), all_layers=True)
    assert hidden.last.dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in hidden.layers)
    assert model.forward(_tokens(model.config.vocab_size))[0].dtype == torch.float32


# -- the int8 products ------------------------------------------------------------------------------

def test_quantize_rows_is_within_half_a_step():
    w = torch.randn(37, 53) * torch.rand(37, 1) * 3
    w[5] = 0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())
    assert bool((q[5] == 0).all())


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("rows", [1, 2, 5, 15, 16, 17, 64, 300])
@pytest.mark.parametrize("k, o", [(77, 300), (8, 13), (1, 5), (256, 1)])
def test_linear_i8_matches_its_reference(backend, rows, k, o):
    g = torch.Generator().manual_seed(rows * 1000 + k)
    q, scale = quantize_rows(torch.randn(o, k, generator=g))
    x = torch.randn(rows, k, generator=g)
    want = linear_i8_ref(x, q, scale)
    got = linear_i8(x, q, scale, backend=backend)
    assert got.shape == (rows, o) and got.dtype == torch.float32
    tol = 1e-5 * max(1.0, float(want.abs().max())) * k ** 0.5  # fp32 sums of k products, any order
    assert float((got - want).abs().max()) <= tol
    # a strided x (a transposed view) and a bf16 x give the same products
    assert float((linear_i8(x.T.contiguous().T, q, scale, backend=backend) - want).abs().max()) <= tol
    assert linear_i8(x.bfloat16(), q, scale, backend=backend).dtype == torch.bfloat16


def test_linear_i8_refuses_bad_arguments():
    q, scale = quantize_rows(torch.randn(4, 6))
    with pytest.raises(ValueError, match="q \\[O, K\\] int8"):
        linear_i8(torch.randn(2, 5), q, scale)
    with pytest.raises(ValueError, match="q \\[O, K\\] int8"):
        linear_i8(torch.randn(2, 6), q.float(), scale)
    with pytest.raises(ValueError, match="unknown WKV backend"):
        linear_i8(torch.randn(2, 6), q, scale, backend="fast")


# -- on a GPU ---------------------------------------------------------------------------------------



@pytest.mark.parametrize("strategy", ["cuda fp32i8", "cuda fp16i8", "cuda bf16", "cuda fp16i8 *2 -> cpu fp32",
                                      "cpu fp32 *1 -> cuda bf16i8"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_strategies_give_the_cpu_logits(checkpoint, strategy):
    version, path = checkpoint
    reference = load_model(path)
    model = load_model(path, strategy=strategy, backend="auto")
    tokens = _tokens(model.config.vocab_size)
    want, _ = reference.forward(tokens, all_logits=True)
    got, state = model.forward(tokens, all_logits=True)
    tol = (0.05 if ("i8" in strategy or "16" in strategy) else 1e-4) * float(want.abs().max())
    assert float((got.cpu() - want).abs().max()) <= tol
    stepped, step_state = None, model.init_state(2)
    for t in range(T):
        stepped, step_state = model.step(tokens[:, t], step_state, inplace=True)
    assert float((stepped.cpu() - want[:, -1]).abs().max()) <= tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["cuda fp16i8 *1 -> cpu fp32", "cpu fp32 *1 -> cuda bf16"])
def test_a_run_streams_through_a_strategy_that_crosses_devices(tmp_path, strategy):
    from docstream.cli import main
    from docstream.store.reader import finished_documents

    path = save_random_checkpoint(tmp_path / "m.pth", "7", seed=2, n_layer=2, n_embd=64, head_size=16,
                                  vocab_size=65536)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.txt").write_text(f"Document {i} about streaming states across devices. " * (10 + 5 * i))
    out = tmp_path / "run"
    assert main(["run", "--model", str(path), "--tokenizer", "rwkv_vocab_v20230424.txt", "--input", str(corpus),
                 "--out", str(out), "--chunk-len", "64", "--quiet", "--no-index", "--strategy", strategy]) == 0
    assert finished_documents(out) == {"d0.txt", "d1.txt", "d2.txt"}


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpu_strategy_carries_the_state_across(checkpoint):
    _, path = checkpoint
    reference = load_model(path)
    model = load_model(path, strategy="cuda:0 fp32 *2 -> cuda:1 fp32")
    tokens = _tokens(model.config.vocab_size)
    want, _ = reference.forward(tokens)
    got, _ = model.forward(tokens)
    assert float((got.cpu() - want).abs().max()) <= 1e-4 * float(want.abs().max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 100])
def test_cuda_linear_i8_matches_its_reference(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    q, scale = quantize_rows(torch.randn(301, 768, generator=g))
    x = torch.randn(rows, 768, generator=g).to(dtype)
    want = linear_i8_ref(x.float(), q, scale)
    got = linear_i8(x.cuda(), q.cuda(), scale.cuda(), backend="cuda")
    assert got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert float((got.float().cpu() - want).abs().max()) <= tol * float(want.abs().max())


# -- on the command line ----------------------------------------------------------------------------

def test_run_records_its_strategy_and_resumes_only_with_it(tmp_path, capsys):
    from docstream.cli import main
    from docstream.store.reader import run_settings

    path = save_random_checkpoint(tmp_path / "m.pth", "7", seed=2, n_layer=2, n_embd=64, head_size=16,
                                  vocab_size=65536)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("A ghost walks on the castle platform at midnight. " * 20)
    (corpus / "b.txt").write_text("Reading the list of ingredients twice before baking. " * 15)
    out = tmp_path / "run"
    argv = ["run", "--model", str(path), "--tokenizer", "rwkv_vocab_v20230424.txt", "--input", str(corpus),
            "--out", str(out), "--chunk-len", "64", "--quiet", "--no-index"]
    assert main([*argv, "--strategy", "cpu fp32i8 *1 -> cpu fp32"]) == 0
    settings = run_settings(out)
    assert settings.strategy == "cpu fp32i8 *1 -> cpu fp32" and settings.dtype == "fp32"
    assert main(argv) != 0  # the same folder without the strategy
    assert "strategy: this directory has 'cpu fp32i8 *1 -> cpu fp32', this run has None" in capsys.readouterr().err
    main(["info", "--model", str(path), "--strategy", "cpu bf16 *1 -> cpu fp32i8"])
    assert "places 0 cpu bf16, 1-2 cpu fp32i8" in capsys.readouterr().out


@pytest.mark.parametrize("settings, message", [
    (dict(strategy="cpu fp32", engine="ray"), "needs engine 'local'"),
    (dict(strategy="cpu bf16", dtype="fp32"), "dtype 'fp32' contradicts strategy 'cpu bf16'"),
    (dict(strategy="cpu fp32 *2+"), "Streamed layers"),
    (dict(strategy="cuda fp16 *2 -> cpu fp32", cuda_graphs=True), "cuda_graphs record one device's work"),
])
def test_run_settings_refuse_a_strategy_they_cannot_honour(tmp_path, settings, message):
    from docstream.store.config import RunConfig

    with pytest.raises(ValueError, match=message):
        RunConfig(model=tmp_path / "m.pth", tokenizer="rwkv_vocab_v20230424.txt", input=tmp_path, out=tmp_path / "o",
                  **settings)
