"""Helpers shared by the task-head tests: a tiny random RWKV-7 checkpoint, small corpora, quick runs."""
from __future__ import annotations

import random
from pathlib import Path

from docstream.testing.checkpoints import save_random_checkpoint
from docstream.store.config import build_config
from docstream.stream.run import run
from docstream.tokenizer import default_world_vocab_path

LORA = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}  # widths that are multiples of 16, like released models
DIM = 32
WORDS = ("river stone light quiet morning paper signal garden winter engine memory window seven across under "
         "between copper harbor lantern meadow orbit pillow quartz saddle timber velvet walnut yellow zephyr "
         "the a of and to in is was for on with as by at from").split()


def make_model(directory: Path) -> Path:
    """A random 2-layer, 32-wide RWKV-7 checkpoint with the World vocabulary's size."""
    return save_random_checkpoint(directory / "tiny7.pth", "7", n_layer=2, n_embd=DIM, head_size=16,
                                  vocab_size=65536, seed=1, lora=LORA)


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


def run_corpus(model: Path, corpus: Path, out: Path, **settings) -> Path:
    """Stream ``corpus`` into ``out`` with small chunks and frequent commits; returns ``out``."""
    values = dict(model=model, tokenizer=default_world_vocab_path(), input=corpus, out=out, chunk_len=16,
                  batch_size=4, snapshot_every=2, commit_every=4, quiet=True)
    values.update(settings)
    run(build_config(None, values))
    return out
