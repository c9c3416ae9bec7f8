"""Subprocess entry point that runs the official ``rwkv`` package.

Usage: ``python tests/_official_worker.py REQUEST.pt RESULT.pt``

Not imported by tests directly -- :mod:`tests.official` starts it in a fresh
interpreter, because ``rwkv.model`` reads ``RWKV_JIT_ON`` / ``RWKV_CUDA_ON`` /
``RWKV_V7_ON`` once, at import time.

REQUEST (``torch.save``d dict): ``model`` (checkpoint path *without* the
``.pth`` suffix -- both loaders append it), ``version`` (``"4"``, ``"5.2"``,
``"6"``, ``"7"``), ``sequences`` (list of lists of ints), ``strategy``,
``split_at`` (int or None).

RESULT (``torch.save``d dict): ``results`` -- one dict per sequence with
float32 CPU tensors ``last`` [V], ``all`` [T,V], ``stepwise`` [T,V] and
optionally ``split`` [V] -- plus ``info`` about the loaded model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Running a script puts its directory first on sys.path; drop it so that files
# in tests/ can never shadow real modules imported by torch / rwkv.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if (Path(p).resolve() if p else Path.cwd().resolve()) != _HERE]

import torch  # noqa: E402

_EXPECTED_V4_6 = {"4": 4, "5.2": 5.2, "6": 6.0}


def _out(x: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """Detach a logits tensor into an independent float32 CPU copy shaped [T, V]."""
    return x.detach().to(device="cpu", dtype=torch.float32).reshape(-1, n_vocab).clone()


def _load(model_name: str, version: str, strategy: str):
    from rwkv.model import RWKV  # env vars were set by the parent process

    if version == "7":
        if RWKV.__name__ != "RWKV_x070":
            raise RuntimeError(f"RWKV_V7_ON=1 did not select the v7 class (got {RWKV.__name__})")
        model = RWKV(model=model_name, strategy=strategy)
        info = {
            "class": type(model).__name__,
            "version": "7",
            "n_layer": int(model.n_layer),
            "n_embd": int(model.n_embd),
            "n_head": int(model.n_head),
            "head_size": int(model.head_size),
            "vocab_size": int(model.args.vocab_size),
        }
        return model, info

    if RWKV.__name__ != "RWKV":
        raise RuntimeError(f"expected the v4-v6 class, got {RWKV.__name__} (is RWKV_V7_ON set?)")
    model = RWKV(model=model_name, strategy=strategy, verbose=False)
    detected = model.version
    if detected != _EXPECTED_V4_6[version]:
        hint = ""
        if version == "5.2" and detected == 5.1:
            # key order ...time_decay, ..., gate, ln_x: layer 0's time_decay is
            # seen before ln_x marks the model as v5, so only layer >= 1 can
            # promote it to v5.2 (and set args.n_head)
            hint = " (the official loader recognises v5.2 only from layer 1's time_decay: needs n_layer >= 2)"
        raise RuntimeError(f"the official package detected RWKV v{detected} but v{version} was requested{hint}")
    args = model.args
    info = {
        "class": type(model).__name__,
        "version": str(detected),
        "n_layer": int(args.n_layer),
        "n_embd": int(args.n_embd),
        "n_att": int(args.n_att),
        "n_ffn": int(args.n_ffn),
        "n_head": int(getattr(args, "n_head", 0)),
        "vocab_size": int(model.w["head.weight"].shape[-1]),  # stored transposed: [C, V]
    }
    return model, info


def _run_sequence(model, seq: list[int], n_vocab: int, split_at: int | None) -> dict[str, torch.Tensor]:
    res: dict[str, torch.Tensor] = {}
    # whole sequence in one call (1-token lists take the single-token path)
    logits, _ = model.forward(list(seq), None)
    res["last"] = _out(logits, n_vocab)[-1]
    logits, _ = model.forward(list(seq), None, full_output=True)
    res["all"] = _out(logits, n_vocab)  # a 1-token call returns [V], reshaped to [1, V]
    # one token at a time, carrying the state; forward() overwrites the
    # entries of the state list it is given and returns that list
    state = None
    rows = []
    for tok in seq:
        logits, state = model.forward([tok], state)
        rows.append(_out(logits, n_vocab))
    res["stepwise"] = torch.cat(rows, dim=0)
    if split_at is not None:
        _, state = model.forward(list(seq[:split_at]), None)
        logits, _ = model.forward(list(seq[split_at:]), state)
        res["split"] = _out(logits, n_vocab)[-1]
    return res


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} REQUEST.pt RESULT.pt", file=sys.stderr)
        return 2
    req = torch.load(argv[1], map_location="cpu", weights_only=True)
    version = req["version"]
    expect_v7 = os.environ.get("RWKV_V7_ON") == "1"
    if expect_v7 != (version == "7"):
        raise RuntimeError(f"RWKV_V7_ON={os.environ.get('RWKV_V7_ON')!r} does not match version {version!r}")
    torch.set_grad_enabled(False)
    model, info = _load(req["model"], version, req["strategy"])
    n_vocab = info["vocab_size"]
    split_at = req["split_at"]
    results = [
        _run_sequence(model, [int(t) for t in seq], n_vocab, split_at) for seq in req["sequences"]
    ]
    tmp = argv[2] + ".part"
    torch.save({"results": results, "info": info}, tmp)
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
