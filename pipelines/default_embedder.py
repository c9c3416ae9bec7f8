"""Build docstream's built-in embedder: the default model's first layers, tuned contrastively for search.

The whole recipe, from a fresh clone (``bash scripts/setup.sh`` first)::

    .venv/bin/python pipelines/man_pages.py runs/man-pages
    .venv/bin/python pipelines/embedder_corpus.py runs/embedder-corpus --man-pages runs/man-pages
    .venv/bin/python pipelines/default_embedder.py init runs/default-embedder-init.pth
    .venv/bin/python pipelines/default_embedder.py weights runs/embedder-corpus/text runs/token_weights.npy
    .venv/bin/docstream train --config pipelines/default_embedder.yaml
    .venv/bin/python pipelines/default_embedder.py install runs/default-embedder

``init`` keeps the built-in model's embedding, its first ``--layers`` blocks, ``ln_out`` and head (a
BlinkDL checkpoint that loads anywhere; the head is unused by an embedder but keeps the file a complete
model): its token embeddings and early layers already know the tokenizer's pieces, so contrastive tuning
starts from there instead of from noise. ``weights`` counts how often each token occurs in the training text
and weighs it ``a / (a + p(token))`` (smooth inverse frequency, Arora, Liang and Ma, ICLR 2017), so mean
pooling is dominated by the rare tokens that tell passages apart rather than by "the" and ",".
``install`` copies the trained ``model.pth`` and its
``model.embedder.json`` (pointing at the default model's tokenizer, which it shares) into the package and
checks the package's model files stay within their budget. The retrieval numbers of the model card come
from ``bench/retrieval_eval.py``.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from docstream.defaults import DEFAULT_EMBEDDER_DIR, DEFAULT_MODEL_DIR
from docstream.model.embedding import read_embedder_spec, write_embedder_spec

#: model files the package ships (the default model, its tokenizer and this embedder) stay under this
MAX_BYTES = 25 * 1000 * 1000


def init(out: Path, layers: int) -> None:
    weights = torch.load(DEFAULT_MODEL_DIR / "model.pth", map_location="cpu", weights_only=True)
    depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    if not 1 <= layers <= depth:
        raise SystemExit(f"--layers must be between 1 and {depth}, got {layers}")
    kept = {k: v for k, v in weights.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < layers}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, out)
    print(f"{out}: {layers} of {depth} layers, {sum(v.numel() for v in kept.values()):,} parameters")


def weights(text: Path, out: Path, a: float) -> None:
    from docstream.tokenizer import load_tokenizer
    from docstream.train.data import read_texts

    tokenizer = load_tokenizer(DEFAULT_MODEL_DIR / "tokenizer.json")
    counts = np.zeros(tokenizer.vocab_size, np.float64)
    for document in read_texts([text]):
        np.add.at(counts, tokenizer.encode(document), 1)
    p = (counts + 1) / (counts.sum() + len(counts))  # add-one: a token never seen is rare, not impossible
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, (a / (a + p)).astype(np.float32))
    print(f"{out}: weights of {len(counts)} tokens from {int(counts.sum()):,} tokens of text (a = {a})")


def install(train_dir: Path, dest: Path) -> None:
    spec = read_embedder_spec(train_dir / "model.pth")
    if spec is None:
        raise SystemExit(f"{train_dir} has no model.embedder.json: finish `docstream train --objective contrastive`")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(train_dir / "model.pth", dest / "model.pth")
    tokenizer = Path("..") / DEFAULT_MODEL_DIR.name / "tokenizer.json"
    update = {"tokenizer": str(tokenizer)}
    if spec.token_weights is not None:
        shutil.copyfile(spec.token_weights, dest / "token_weights.npy")
        update["token_weights"] = "token_weights.npy"
    write_embedder_spec(dest / "model.embedder.json", spec.model_copy(update=update))
    shipped = [DEFAULT_MODEL_DIR / "model.pth", DEFAULT_MODEL_DIR / "tokenizer.json", dest / "model.pth"]
    total = sum(p.stat().st_size for p in shipped)
    if total > MAX_BYTES:
        raise SystemExit(f"the model files come to {total:,} bytes, over the {MAX_BYTES:,} budget")
    print(f"installed into {dest}; model files {total / 1e6:.1f} MB of {MAX_BYTES / 1e6:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    first = sub.add_parser("init", help="write the starting checkpoint")
    first.add_argument("out", type=Path)
    first.add_argument("--layers", type=int, default=2)
    weigh = sub.add_parser("weights", help="write the token weights of mean pooling")
    weigh.add_argument("text", type=Path)
    weigh.add_argument("out", type=Path)
    weigh.add_argument("--a", type=float, default=1e-3)
    last = sub.add_parser("install", help="copy the trained embedder into the package")
    last.add_argument("train_dir", type=Path)
    last.add_argument("--dest", type=Path, default=DEFAULT_EMBEDDER_DIR)
    args = parser.parse_args()
    if args.step == "init":
        init(args.out, args.layers)
    elif args.step == "weights":
        weights(args.text, args.out, args.a)
    else:
        install(args.train_dir, args.dest)


if __name__ == "__main__":
    main()
