"""``docstream demo``: the main job end to end on the bundled sample corpus.

Until docstream ships a trained default model, the demo writes a small RWKV-7 checkpoint with random
weights in BlinkDL's layout, so everything runs offline: the numbers it shows measure the pipeline
(throughput, snapshot sizes, resumability), not language understanding.
"""
from __future__ import annotations

from pathlib import Path

from docstream.model.synthetic import save_random_checkpoint
from docstream.stream import RunStore, build_config, run
from docstream.tasks.search import format_hits, search
from docstream.tokenizer import default_world_vocab_path

SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "sample_corpus"
DEMO_MODEL = dict(version="7", n_layer=4, n_embd=256, head_size=64, vocab_size=65536, seed=0)


def run_demo(out: str | Path, quiet: bool = False) -> int:
    """Stream the sample corpus into ``out`` (resuming if it exists) and print what was written."""
    out = Path(out)
    model = out.parent / f"{out.name}-model" / "rwkv7-random-L4-C256.pth"
    if not model.exists():
        print(f"writing a random-weight RWKV-7 checkpoint (L=4, C=256) to {model}")
        save_random_checkpoint(model, **DEMO_MODEL)
    config = build_config(None, dict(model=model, tokenizer=default_world_vocab_path(), input=SAMPLE_CORPUS,
                                     out=out, chunk_len=64, batch_size=4, snapshot_every=2, quiet=quiet))
    summary = run(config)
    print("\n".join(summary.lines(out)))
    store = RunStore(out)
    for table in ("documents", "embeddings", "snapshots", "errors"):
        rows = store.read_table(table)
        size = sum(p.stat().st_size for p in store.committed_files(table))
        print(f"  {table:<10} {rows.num_rows:>5} rows  {size / 1024:>8.1f} KiB  ({out / table}/*.parquet)")
    docs = store.read_table("documents").to_pylist()
    for doc in sorted(docs, key=lambda d: d["doc_id"]):
        print(f"  {doc['doc_id']:<28} {doc['n_tokens']:>5} tokens in {doc['n_chunks']} chunks")
    query = "how do gardeners make compost"
    print(f'\nsearch "{query}" (FAISS Flat index over the last-token embeddings):')
    print(format_hits(search(out, query, k=3)))
    print("\nmodel weights are random, so rankings are chance: run `docstream run --model <a BlinkDL .pth>` "
          "for real results")
    return 0
