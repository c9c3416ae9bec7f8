"""``docstream demo``: the main job end to end on the bundled sample corpus with the built-in model.

It streams the sample corpus (three Shakespeare plays the default model never saw in training, and a few
short modern notes) through the default model (a small RWKV-7 trained on Shakespeare's other plays, see
``docstream/data/default_model/MODEL_CARD.md``), then shows what the run wrote, a semantic search over
its embeddings, and a summary generated from a document's final snapshot. Re-running resumes.
"""
from __future__ import annotations

from pathlib import Path

from docstream.defaults import default_model_path, default_tokenizer_path
from docstream.stream import RunStore, build_config, run
from docstream.tasks.generate import SamplingConfig
from docstream.tasks.search import format_hits, search
from docstream.tasks.summarize import summarize

SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "sample_corpus"
SEARCH_QUERY = "a ghost walks on the castle platform at midnight"
SUMMARY_DOC = "plays/the-tempest.txt"
#: Shakespeare's own summary device: a Chorus speaks the argument of the play. The model was trained on
#: plays, not on instructions, so the demo prompts it the way its training text would.
SUMMARY_PROMPT = "\n\nEPILOGUE\n\nChorus\n"
SUMMARY_SAMPLING = SamplingConfig(temperature=0.8, top_p=0.6, frequency_penalty=0.5, penalty_decay=0.996,
                                  max_tokens=80, stop=["\n\n"], seed=0)


def run_demo(out: str | Path, quiet: bool = False) -> int:
    """Stream the sample corpus into ``out`` (resuming if it exists) and print what was written."""
    out = Path(out)
    config = build_config(None, dict(model=default_model_path(), tokenizer=default_tokenizer_path(),
                                     input=SAMPLE_CORPUS, out=out, chunk_len=256, batch_size=4, snapshot_every=4,
                                     quiet=quiet))
    summary = run(config)
    print("\n".join(summary.lines(out)))
    store = RunStore(out)
    for table in ("documents", "embeddings", "snapshots", "errors"):
        rows = store.read_table(table)
        size = sum(p.stat().st_size for p in store.committed_files(table))
        print(f"  {table:<10} {rows.num_rows:>5} rows  {size / 1024:>8.1f} KiB  ({out / table}/*.parquet)")
    docs = store.read_table("documents").to_pylist()
    for doc in sorted(docs, key=lambda d: d["doc_id"]):
        print(f"  {doc['doc_id']:<36} {doc['n_tokens']:>6} tokens in {doc['n_chunks']} chunks")

    print(f'\nsearch "{SEARCH_QUERY}" (hybrid: BM25 and the built-in embedder, fused by reciprocal rank):')
    print(format_hits(search(out, SEARCH_QUERY, k=3)))

    print(f"\nsummary of {SUMMARY_DOC}, generated from its final snapshot (prompt {SUMMARY_PROMPT!r}):")
    result = summarize(out, doc_ids=[SUMMARY_DOC], template=SUMMARY_PROMPT, sampling=SUMMARY_SAMPLING,
                       name="demo", progress=False)
    print("  " + result.summaries[0].text.strip().replace("\n", "\n  "))
    print(f"  (written to {result.path})")
    print("\nthe default model is small and trained only on Shakespeare (see its MODEL_CARD.md); "
          "run `docstream run --model <a BlinkDL .pth> --tokenizer <its tokenizer>` for a released RWKV model")
    return 0
