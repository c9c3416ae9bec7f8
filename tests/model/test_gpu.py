"""The whole model on a CUDA GPU against the same model on CPU (itself tested against the official package).

Every test is marked ``gpu`` and skips cleanly without a GPU. Each version runs on random checkpoints in
BlinkDL's layout, through the CUDA WKV kernels (``backend="cuda"``, so a failed build is an error, not a
silent fallback): whole sequences, all logits, token by token, split with the state carried, batched
decoding steps, half precision, and a training step's gradients for RWKV-7.
"""
import pytest
import torch

from docstream.model import load_model
from docstream.testing.checkpoints import save_random_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

T = 37
SPLIT = 11
TOL = 2e-4  # fp32, max abs difference of logits whose scale is ~1-10; TF32 matmuls are off

CASES = {
    "v4": dict(version="4", n_layer=3, n_embd=48, vocab_size=131, dim_ffn=136),
    "v5.2": dict(version="5.2", n_layer=2, n_embd=64, head_size=16, vocab_size=113),
    "v6": dict(version="6", n_layer=2, n_embd=128, head_size=64, vocab_size=127),
    "v7": dict(version="7", n_layer=3, n_embd=64, head_size=16, vocab_size=109),
    "v7-h64": dict(version="7", n_layer=2, n_embd=256, head_size=64, vocab_size=151, dim_ffn=300),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    spec = dict(CASES[request.param])
    path = save_random_checkpoint(tmp_path_factory.mktemp(request.param) / "model.pth", seed=3, **spec)
    seqs = torch.randint(0, spec["vocab_size"], (3, T), generator=torch.Generator().manual_seed(5))
    return path, load_model(path), load_model(path, device="cuda", backend="cuda"), seqs


def _close(actual, expected, tol=TOL, what="logits"):
    diff = (actual.detach().float().cpu() - expected.detach().float().cpu()).abs().max().item()
    assert diff <= tol, f"{what}: max abs difference {diff:.3g} > {tol}"


def _states_close(a, b, tol=TOL):
    for name in ("att_shift", "wkv", "ffn_shift"):
        _close(getattr(a, name), getattr(b, name), tol, what=f"state.{name}")


def test_whole_sequence_and_state(case):
    _, cpu, gpu, seqs = case
    ref, ref_state = cpu.forward(seqs)
    out, state = gpu.forward(seqs)
    assert out.is_cuda and state.wkv.is_cuda and state.wkv.dtype == torch.float32
    _close(out, ref)
    _states_close(state, ref_state)


def test_all_logits(case):
    _, cpu, gpu, seqs = case
    _close(gpu.forward(seqs, all_logits=True)[0], cpu.forward(seqs, all_logits=True)[0])


def test_split_and_token_by_token_agree_with_whole(case):
    _, cpu, gpu, seqs = case
    whole, whole_state = gpu.forward(seqs, all_logits=True)
    first, state = gpu.forward(seqs[:, :SPLIT], all_logits=True)
    rest, split_state = gpu.forward(seqs[:, SPLIT:], state, all_logits=True)
    _close(torch.cat([first, rest], 1), whole, what="split logits")
    _states_close(split_state, whole_state)
    state, steps = None, []
    for t in range(8):
        logits, state = gpu.forward(seqs[:, t:t + 1], state)
        steps.append(logits)
    _close(torch.stack(steps, 1), whole[:, :8], what="token-by-token logits")


def test_batched_decoding_step(case):
    _, cpu, gpu, seqs = case
    _, state = gpu.forward(seqs[:, :SPLIT])
    _, cpu_state = cpu.forward(seqs[:, :SPLIT])
    own = state.clone()
    for t in range(SPLIT, SPLIT + 5):
        logits, state = gpu.step(seqs[:, t], state)
        ref, cpu_state = cpu.step(seqs[:, t], cpu_state)
        _close(logits, ref, what=f"step {t}")
        inplace, same = gpu.step(seqs[:, t], own, inplace=True)
        assert same is own and torch.equal(inplace, logits) and own.equal(state)
    _states_close(state, cpu_state)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision(case, dtype):
    path, cpu, _, seqs = case
    half = load_model(path, device="cuda", dtype=dtype, backend="cuda")
    ref, _ = cpu.forward(seqs, all_logits=True)
    out, state = half.forward(seqs, all_logits=True)
    assert state.wkv.dtype == torch.float32
    # relative to the logits' scale: bf16 keeps 8 bits of mantissa, fp16 11
    scale = ref.abs().max().item()
    _close(out, ref, tol=(0.08 if dtype == "bf16" else 0.02) * scale, what=f"{dtype} logits")


def test_training_gradients_match_cpu(tmp_path):
    spec = CASES["v7-h64"]
    path = save_random_checkpoint(tmp_path / "model.pth", seed=4, **spec)
    tokens = torch.randint(0, spec["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(6))
    grads = {}
    for device in ("cpu", "cuda"):
        model = load_model(path, device=device, backend=device)
        model.requires_grad_(True)
        logits, _ = model.forward_train(tokens[:, :-1].to(device))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten().to(device))
        loss.backward()
        grads[device] = (loss.detach().cpu(), {n: p.grad.detach().cpu() for n, p in model.named_parameters()
                                                if p.grad is not None})
    _close(grads["cuda"][0], grads["cpu"][0], tol=1e-5, what="loss")
    assert grads["cuda"][1].keys() == grads["cpu"][1].keys() and len(grads["cpu"][1]) > 10
    for name, g in grads["cpu"][1].items():
        scale = max(g.abs().max().item(), 1e-12)
        _close(grads["cuda"][1][name], g, tol=1e-3 * scale, what=f"grad of {name}")


def test_captured_forward_replays_the_eager_forward(case, tmp_path):
    # a model of its own: the capture registers with the model, and the shared one serves other tests
    from docstream.model.base import tokens_checked
    from docstream.model.graphs import capture_forward

    path, _, _, seqs = case
    gpu = load_model(path, device="cuda", backend="cuda")
    assert capture_forward(gpu, 3, T) is not None  # its own check against the eager forward passed
    _, mid = gpu.forward(seqs[:, :SPLIT].cuda())
    for tokens, state in ((seqs, gpu.init_state(3)), (seqs.flip(1), mid)):
        tokens = tokens.cuda()
        eager = gpu.forward_hidden(tokens, state)  # not under tokens_checked: never replayed
        with tokens_checked():
            replayed = gpu.forward_hidden(tokens, state)
        _close(replayed.last, eager.last, what="hidden")
        _states_close(replayed.state, eager.state)


def test_captured_steps_match_eager_steps_in_place(case):
    from docstream.model.graphs import enable_step_graphs

    path, _, _, seqs = case
    eager, graphed = (load_model(path, device="cuda", backend="cuda") for _ in range(2))
    enable_step_graphs(graphed)
    _, start = eager.forward(seqs[:, :SPLIT].cuda())
    states = {"eager": start.clone(), "graphs": start.clone()}
    for t in range(SPLIT, SPLIT + 6):
        want, same_e = eager.step(seqs[:, t], states["eager"], inplace=True)
        got, same_g = graphed.step(seqs[:, t], states["graphs"], inplace=True)
        assert same_e is states["eager"] and same_g is states["graphs"]
        _close(got, want)
        _states_close(states["graphs"], states["eager"])
    assert graphed._captured_steps.get(3) is not None  # captured (and checked), not left eager


def test_a_run_with_cuda_graphs_writes_what_an_eager_run_writes(tmp_path):
    from docstream.stream.run import run
    from tests.helpers import make_model, nested_corpus, run_config
    from tests.stream.tables import assert_same_outputs, sorted_tables

    model, corpus = make_model(tmp_path), nested_corpus(tmp_path / "corpus", 10, seed=4)
    outs = {}
    for graphs in (False, True):
        outs[graphs] = tmp_path / f"out-{graphs}"
        run(run_config(model, corpus, outs[graphs], device="cuda", dtype="fp32", backend="cuda",
                       cuda_graphs=graphs))
    assert_same_outputs(sorted_tables(outs[True]), sorted_tables(outs[False]))
