"""Retrieval evaluation of docstream search on BEIR-layout collections, next to an independent BM25.

    python bench/beir_collections.py bench/out/beir    # readmes/, pydoc/, debian/, manpages/, docstrings-dev/
    python bench/retrieval_eval.py --collection bench/out/beir/readmes --collection bench/out/beir/pydoc \\
        --collection bench/out/beir/debian --collection bench/out/beir/manpages \\
        --collection bench/out/beir/docstrings-dev --work bench/out/retrieval --json bench/out/retrieval.json

A collection folder holds ``corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id",
"text"}) and ``qrels/test.tsv`` (``query-id corpus-id score``, with a header line). Each document is
given to docstream as one JSONL record whose text is its title, a blank line and its text;
``docstream run`` streams them (built-in model unless ``--model``; ``--chunk-len`` 256 so a document
has several chunks; ``--no-index``), and the Python API ``docstream.tasks.search.Searcher`` answers all
queries with ``search_many`` for each retriever:

* ``lexical``: mode "lexical" (BM25 over chunk texts, each chunk's score plus twice its document's);
* ``dense-raw``: mode "dense", pooling "mean" (the vectors the run's own model computed while streaming);
* ``dense-tuned``: mode "dense", pooling "embedder" (chunk texts embedded by the built-in embedder);
* ``hybrid``: mode "hybrid", pooling "embedder" (what ``docstream search`` does by default);
* ``bm25s``: the bm25s package over whole documents (English stop words, PyStemmer's English stemmer),
  an implementation independent of docstream's.

Hits are chunks; a document is ranked by its best chunk (``--depth`` chunk hits are asked for, enough to
rank 10+ distinct documents). Relevance is binary (qrels score > 0). We report recall@10, nDCG@10,
MRR@10 and the queries per second of ``search_many`` (one call with all queries, snippets off; index
building is timed apart). Runs are cached in ``--work``: a collection whose docstream corpus and run
settings are unchanged reuses its finished run and indexes.

Threads: ``--threads`` (default 1) sets OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS for
this process and the ``docstream run`` it starts. On a shared 2-core machine under load, torch with its
default two threads ran the built-in model about 5x slower than with one (280 against 1,390 tok/s on the
same 3 documents), each small op waiting on a descheduled sibling thread.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


#: each retriever's Searcher options (None: bm25s, outside docstream)
RETRIEVERS = {"lexical": {"mode": "lexical"}, "dense-raw": {"mode": "dense", "pooling": "mean"},
              "dense-tuned": {"mode": "dense", "pooling": "embedder"},
              "hybrid": {"mode": "hybrid", "pooling": "embedder"}, "bm25s": None}
CUTOFF = 10


@dataclass
class Collection:
    name: str
    #: (_id, title, text), in file order
    docs: list[tuple[str, str, str]]
    #: query id -> text (queries without qrels are dropped)
    queries: dict[str, str]
    #: query id -> relevant doc ids
    qrels: dict[str, set[str]]


# ---------------------------------------------------------------------------------------------
# BEIR layout


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: a BEIR collection has corpus.jsonl, queries.jsonl and qrels/test.tsv")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_collection(directory: Path) -> Collection:
    """A BEIR collection: corpus, the queries that have judgements, and the positive judgements."""
    docs = [(str(d["_id"]), d.get("title") or "", d.get("text") or "") for d in read_jsonl(directory / "corpus.jsonl")]
    qrels_path = directory / "qrels" / "test.tsv"
    if not qrels_path.is_file():
        raise SystemExit(f"{qrels_path} is missing: a BEIR collection has qrels/test.tsv")
    qrels: dict[str, set[str]] = {}
    ids = {d[0] for d in docs}
    for n, line in enumerate(qrels_path.read_text().splitlines()):
        parts = line.split("\t")
        if n == 0 and parts[0] == "query-id" or not line.strip():
            continue
        if len(parts) != 3:
            raise SystemExit(f"{qrels_path} line {n + 1}: expected query-id, corpus-id and score separated by tabs")
        if float(parts[2]) > 0:
            if parts[1] not in ids:
                raise SystemExit(f"{qrels_path} line {n + 1}: corpus-id {parts[1]!r} is not in corpus.jsonl")
            qrels.setdefault(parts[0], set()).add(parts[1])
    queries = {str(q["_id"]): q["text"] for q in read_jsonl(directory / "queries.jsonl") if str(q["_id"]) in qrels}
    return Collection(directory.name, docs, queries, {q: qrels[q] for q in queries})


def document_text(title: str, text: str) -> str:
    return f"{title}\n\n{text}" if title else text


# ---------------------------------------------------------------------------------------------
# docstream run (cached)


def prepare_run(collection: Collection, args: argparse.Namespace) -> tuple[Path, float | None]:
    """The run folder of ``collection`` in ``--work`` (streamed now unless an identical finished run is
    there); returns it and the seconds streaming took (None when reused)."""
    lines = "".join(json.dumps({"id": i, "text": document_text(t, x)}) + "\n" for i, t, x in collection.docs)
    settings = [str(args.model or ""), str(args.tokenizer or ""), str(args.chunk_len)]
    key = hashlib.sha256("\0".join([lines, *settings]).encode()).hexdigest()[:12]
    work = args.work / f"{collection.name}-{key}"
    out = work / "run"
    if (work / "done.json").is_file():
        return out, None
    work.mkdir(parents=True, exist_ok=True)
    (work / "corpus.jsonl").write_text(lines)
    command = [docstream_command(), "run", "--input", str(work / "corpus.jsonl"), "--format", "jsonl",
               "--id-field", "id", "--text-field", "text", "--chunk-len", str(args.chunk_len), "--out", str(out),
               "--no-index", "--quiet", "--json"]
    if args.model:
        command += ["--model", str(args.model)]
    if args.tokenizer:
        command += ["--tokenizer", str(args.tokenizer)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (work / "done.json").write_text(json.dumps({"command": command, "seconds": seconds, "summary": done.stdout}) + "\n")
    return out, seconds


def docstream_command() -> str:
    """The ``docstream`` script of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "docstream"
    found = str(beside) if beside.is_file() else shutil.which("docstream")
    if found is None:
        raise SystemExit("no `docstream` command beside this Python or on PATH; pip install -e . first")
    return found


def chunk_count(out: Path) -> int:
    from docstream.tasks.chunk_text import read_chunk_texts

    return len(read_chunk_texts(out).texts)


# ---------------------------------------------------------------------------------------------
# Retrievers


def docstream_rankings(out: Path, options: dict, queries: list[str],
                       depth: int) -> tuple[list[list[str]], float, float]:
    """Each query's documents, best chunk first, from a docstream Searcher; the seconds opening the searcher
    took (indexes built or updated) and the seconds ``search_many`` took."""
    from docstream.tasks.search import Searcher

    if options.get("pooling") == "embedder":
        embedder_index(out, options["embedder"])
    start = time.perf_counter()
    searcher = Searcher(out, **options)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    results = searcher.search_many(queries, k=depth, snippets=False)
    searched = time.perf_counter() - start
    return [list(dict.fromkeys(hit.doc_id for hit in hits)) for hits in results], opened, searched


def embedder_index(out: Path, embedder: Path | None) -> None:
    """Index ``embedder``'s vectors (None: the built-in embedder's) in the run at ``out``, unless its embedder
    index already holds them."""
    from docstream.tasks.embedder import resolve_embedder
    from docstream.tasks.index import read_meta, update_index

    meta = read_meta(out, "embedder")
    if meta is None or meta.embedder != resolve_embedder(embedder).fingerprint:
        update_index(out, "embedder", embedder=embedder, rebuild=True)


def bm25s_rankings(collection: Collection, queries: list[str], depth: int) -> tuple[list[list[str]], float, float]:
    """Each query's documents from bm25s over whole documents (stop words "en", English stemmer)."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    start = time.perf_counter()
    model = bm25s.BM25()
    model.index(bm25s.tokenize([document_text(t, x) for _, t, x in collection.docs], stopwords="en",
                               stemmer=stemmer, show_progress=False), show_progress=False)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    found, _ = model.retrieve(tokens, k=min(depth, len(collection.docs)), show_progress=False, n_threads=1)
    searched = time.perf_counter() - start
    ids = [d[0] for d in collection.docs]
    return [[ids[i] for i in row] for row in found.tolist()], opened, searched


# ---------------------------------------------------------------------------------------------
# Metrics


def metrics(rankings: list[list[str]], relevant: list[set[str]], cutoff: int = CUTOFF) -> dict[str, float]:
    """Mean recall@cutoff, nDCG@cutoff and MRR@cutoff with binary relevance."""
    recall = ndcg = mrr = 0.0
    for ranking, wanted in zip(rankings, relevant):
        top = ranking[:cutoff]
        gains = [1.0 if d in wanted else 0.0 for d in top]
        recall += sum(gains) / len(wanted)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(wanted), cutoff)))
        ndcg += sum(g / math.log2(i + 2) for i, g in enumerate(gains)) / ideal
        mrr += next((1 / (i + 1) for i, g in enumerate(gains) if g), 0.0)
    n = max(len(rankings), 1)
    return {f"recall@{cutoff}": recall / n, f"nDCG@{cutoff}": ndcg / n, f"MRR@{cutoff}": mrr / n}


def evaluate(directory: Path, args: argparse.Namespace) -> dict:
    """Every retriever's scores on one collection, with timings."""
    collection = read_collection(directory)
    if not collection.queries:
        raise SystemExit(f"{directory}: no query has a positive judgement in qrels/test.tsv")
    out, streamed = prepare_run(collection, args)
    qids = sorted(collection.queries)
    texts, relevant = [collection.queries[q] for q in qids], [collection.qrels[q] for q in qids]
    report = {"collection": collection.name, "path": str(directory), "documents": len(collection.docs),
              "queries": len(qids), "chunks": chunk_count(out), "run": str(out), "run_seconds": streamed,
              "retrievers": {}}
    print(f"\n{collection.name}: {len(collection.docs)} documents, {report['chunks']} chunks, {len(qids)} queries; "
          + (f"docstream run {streamed:.1f} s" if streamed is not None else f"reusing run {out}"), flush=True)
    for name in args.retrievers:
        try:
            if name == "bm25s":
                rankings, opened, searched = bm25s_rankings(collection, texts, args.depth)
            else:
                options = dict(RETRIEVERS[name])
                if options.get("pooling") == "embedder":
                    options["embedder"] = args.embedder
                if name == "hybrid" and args.dense_weight is not None:
                    options["dense_weight"] = args.dense_weight
                rankings, opened, searched = docstream_rankings(out, options, texts, args.depth)
        except Exception as error:  # noqa: BLE001 -- a failing retriever is reported, the others still run
            print(f"  {name}: FAILED {type(error).__name__}: {error}", flush=True)
            report["retrievers"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        scores = metrics(rankings, relevant)
        short = sum(len(r) < CUTOFF for r in rankings)
        scores.update({"queries/s": len(texts) / searched, "open_seconds": opened, "search_seconds": searched,
                       "queries_under_10_docs": short})
        report["retrievers"][name] = scores
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in scores.items()), flush=True)
    return report


def markdown(reports: list[dict]) -> str:
    columns = [f"recall@{CUTOFF}", f"nDCG@{CUTOFF}", f"MRR@{CUTOFF}", "queries/s", "open_seconds"]
    lines = ["| collection | docs | queries | retriever | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "|---|---:|---:|---|" + "---:|" * len(columns)]
    for report in reports:
        for name, scores in report["retrievers"].items():
            head = f"| {report['collection']} | {report['documents']} | {report['queries']} | {name} |"
            if "error" in scores:
                lines.append(head + f" failed: {scores['error'][:80]} |" + " |" * (len(columns) - 1))
                continue
            cells = [f"{scores[c]:.3f}" if c.startswith(("recall", "nDCG", "MRR")) else f"{scores[c]:.1f}"
                     for c in columns]
            lines.append(head + " " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", type=Path, action="append", required=True,
                   help="BEIR collection folder (corpus.jsonl, queries.jsonl, qrels/test.tsv); repeatable")
    p.add_argument("--work", type=Path, default=Path("bench/out/retrieval"),
                   help="cache of corpora and runs (default bench/out/retrieval)")
    p.add_argument("--model", type=Path, help="RWKV .pth checkpoint (default: docstream's built-in model)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer of --model (default: the built-in model's)")
    p.add_argument("--chunk-len", type=int, default=256, help="tokens per chunk (default 256)")
    p.add_argument("--depth", type=int, default=100, help="chunk hits asked per query (default 100)")
    p.add_argument("--retrievers", nargs="+", choices=list(RETRIEVERS), default=list(RETRIEVERS))
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (default 1; see above)")
    p.add_argument("--embedder", type=Path, help="embedder checkpoint for dense-tuned and hybrid (default: built-in)")
    p.add_argument("--dense-weight", type=float, help="the dense ranking's weight in hybrid fusion (default: "
                                                      "docstream's)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.chunk_len < 1 or args.depth < CUTOFF or args.threads < 1:
        p.error(f"--chunk-len and --threads must be positive and --depth at least {CUTOFF}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # before numpy's BLAS or torch start their thread pools (both are imported lazily, below)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    start = time.perf_counter()
    reports = [evaluate(directory, args) for directory in args.collection]
    table = markdown(reports)
    print("\n" + table)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {"model": str(args.model or "built-in"),
                                                      "chunk_len": args.chunk_len, "depth": args.depth},
                                         "collections": reports, "table": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
