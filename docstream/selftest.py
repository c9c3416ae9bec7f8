"""``docstream selftest``: stream random checkpoints of every version three ways and compare.

For each version a small random checkpoint is written in BlinkDL's layout, loaded back through the
real loader, and one sequence is run whole, in chunks with the state carried, and token by token.
The three must give the same logits; the report also gives tokens/s of the chunked run.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from docstream.model import load_model
from docstream.model.feed import feed_sequence
from docstream.testing.checkpoints import save_random_checkpoint

TOLERANCE = 1e-4
SHAPE = dict(n_layer=4, n_embd=256, head_size=64, vocab_size=1000)
CHUNK = 64
STEPWISE_TOKENS = 48


def _stream(model, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits [1, T, V] of ``tokens`` [1, T] fed ``chunk`` tokens at a time, the state carried."""
    return torch.cat([fed.logits for _, fed in feed_sequence(model, tokens[0], None, chunk, "all")])[None]


def check_version(version: str, workdir: Path, backend: str, n_tokens: int) -> dict:
    path = save_random_checkpoint(workdir / f"rwkv{version}.pth", version, seed=0, **SHAPE)
    model = load_model(path, backend=backend)
    tokens = torch.randint(0, SHAPE["vocab_size"], (1, n_tokens), generator=torch.Generator().manual_seed(1))
    whole, _ = model.forward(tokens, all_logits=True)
    start = time.perf_counter()
    chunked = _stream(model, tokens, CHUNK)
    seconds = time.perf_counter() - start
    stepwise = _stream(model, tokens[:, :STEPWISE_TOKENS], 1)
    return {
        "version": version,
        "chunked": (chunked - whole).abs().max().item(),
        "stepwise": (stepwise - whole[:, :STEPWISE_TOKENS]).abs().max().item(),
        "tok_s": n_tokens / seconds,
    }


def run_selftest(versions: list[str], backend: str = "auto", tokens: int = 512) -> bool:
    """Run the check for ``versions``; print a table; True when every difference is within tolerance."""
    if tokens < STEPWISE_TOKENS:
        raise ValueError(f"--tokens must be at least {STEPWISE_TOKENS}, got {tokens}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="docstream-selftest-") as tmp:
        for version in tqdm(versions, desc="selftest", unit="version"):
            rows.append(check_version(version.strip(), Path(tmp), backend, tokens))
    print(f"\nRWKV L={SHAPE['n_layer']} C={SHAPE['n_embd']} head {SHAPE['head_size']}, {tokens} tokens, "
          f"chunks of {CHUNK}, backend {backend}, {torch.get_num_threads()} threads")
    print(f"{'version':>8} {'max|chunked-whole|':>20} {'max|stepwise-whole|':>20} {'chunked tok/s':>14}  ok")
    ok = True
    for r in rows:
        good = r["chunked"] <= TOLERANCE and r["stepwise"] <= TOLERANCE
        ok &= good
        print(f"{r['version']:>8} {r['chunked']:>20.2e} {r['stepwise']:>20.2e} {r['tok_s']:>14.0f}  "
              f"{'yes' if good else 'NO'}")
    print("all streaming paths agree" if ok else f"MISMATCH above tolerance {TOLERANCE}")
    return ok
