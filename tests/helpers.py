"""Helpers shared by the tests (the fixtures built on them are in tests/conftest.py): a tiny random RWKV-7
checkpoint, small corpora of random sentences, quick runs, and the guard of the compiled-kernel tests."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import pytest

from docstream.kernels import build
from docstream.store.config import RunConfig, build_config
from docstream.stream.run import run
from docstream.testing.checkpoints import save_random_checkpoint
from docstream.tokenizer import default_world_vocab_path

ROOT = Path(__file__).resolve().parents[1]
LORA = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}  # widths that are multiples of 16, like released models
DIM = 32
WORDS = ("river stone light quiet morning paper signal garden winter engine memory window seven across under "
         "between copper harbor lantern meadow orbit pillow quartz saddle timber velvet walnut yellow zephyr "
         "the a of and to in is was for on with as by at from").split()

#: Set to 1 (as .ci/run does) to make a compiled kernel that cannot be built fail its tests, not skip them.
REQUIRE_KERNELS = "DOCSTREAM_REQUIRE_KERNELS"


def make_model(directory: Path, seed: int = 1) -> Path:
    """A random 2-layer, 32-wide RWKV-7 checkpoint with the World vocabulary's size."""
    return save_random_checkpoint(Path(directory) / "tiny7.pth", "7", n_layer=2, n_embd=DIM, head_size=16,
                                  vocab_size=65536, seed=seed, lora=LORA)


def random_text(rng: random.Random, n_words: int) -> str:
    """Sentences of words drawn from :data:`WORDS`."""
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if rng.random() < 0.1:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines).strip()


def write_corpus(root: Path, n_docs: int, seed: int, min_words: int = 3, max_words: int = 60,
                 first: int = 0) -> dict[str, str]:
    """``n_docs`` text files doc{first}.txt... under ``root``; returns doc id -> text."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    texts = {}
    for i in range(first, first + n_docs):
        text = random_text(rng, rng.randint(min_words, max_words))
        (root / f"doc{i:03d}.txt").write_text(text)
        texts[f"doc{i:03d}.txt"] = text
    return texts


def nested_corpus(root: Path, n_docs: int, seed: int, max_words: int = 400) -> Path:
    """``n_docs`` documents of 1..``max_words`` words, every third one in the subfolder ``nested``."""
    rng = random.Random(seed)
    for i in range(n_docs):
        path = root / ("nested" if i % 3 == 0 else "") / f"doc{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(random_text(rng, rng.randint(1, max_words)))
    return root


def run_config(model: Path, corpus: Path, out: Path, /, **settings) -> RunConfig:
    """Settings of a quick run: small chunks, batches of 3, snapshots every 2 chunks, commits every 5."""
    values = dict(model=model, tokenizer=default_world_vocab_path(), input=corpus, out=out, chunk_len=16,
                  batch_size=3, snapshot_every=2, commit_every=5, quiet=True)
    values.update(settings)
    return build_config(None, values)


def run_corpus(model: Path, corpus: Path, out: Path, /, **settings) -> Path:
    """Stream ``corpus`` into ``out`` (:func:`run_config`, but batches of 4 and commits every 4); returns ``out``."""
    run(run_config(model, corpus, out, **{"batch_size": 4, "commit_every": 4, **settings}))
    return out


def load_or_skip(load: Callable[[], ModuleType], what: str) -> ModuleType:
    """``load()``, the build of a compiled extension. When it cannot be built the test is skipped -- or,
    with DOCSTREAM_REQUIRE_KERNELS=1, fails with the build error, so CI cannot pass with no kernel tested."""
    try:
        return load()
    except build.BuildError as exc:
        err = exc  # reported outside the handler, so the failure shows the build error once, not chained
    if os.environ.get(REQUIRE_KERNELS) == "1":
        pytest.fail(f"{what} could not be built, and {REQUIRE_KERNELS}=1 requires them:\n{err}", pytrace=False)
    pytest.skip(f"{what} unavailable: {err.reason} (set {REQUIRE_KERNELS}=1 to fail instead)")


def imported_by(code: str, modules: Iterable[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code`` (from the repository root),
    sorted; ``code`` must succeed. How the tests check that a fast path stays free of torch and friends."""
    probe = (f"{code}\nimport json as _json, sys as _sys\n"
             f"print(_json.dumps(sorted(m for m in {tuple(modules)!r} if m in _sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
