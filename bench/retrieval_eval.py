"""Retrieval evaluation of docstream's chunk embeddings on real English text, next to a TF-IDF baseline.

Corpus: the long descriptions (the README text in each distribution's ``METADATA``) of the Python
packages installed in the running interpreter's environment, read with ``importlib.metadata``. They are
real English prose written by each project's authors, available offline wherever docstream is
installed. Each text stays under its own project's licence (recorded in its ``License`` /
``License-Expression`` metadata field; for the packages docstream installs: MIT, BSD, Apache-2.0,
MPL-2.0 and PSF licences); the script only reads them at run time, prints the licence of each source it
used, and redistributes nothing. Long READMEs are cut at paragraph boundaries into documents of at most
``--doc-chars`` characters (at most ``--max-parts`` per package).

Protocol: from each document, ``--queries-per-doc`` prose paragraphs are held out (removed from the
document) and become queries; docstream runs over the remaining documents; a query is answered by the
document whose chunk is ranked highest. We report recall@1, recall@10 and MRR (document level, chunks
ranked by cosine similarity, a document ranked by its best chunk) for each pooling (last, mean,
state), for a TF-IDF baseline over the same chunks (numpy, sublinear tf, smooth idf, cosine), and the
recall@10 of approximate FAISS indexes (IVF, HNSW, PQ) against exact Flat search on the same queries.

Without ``--model`` a small random RWKV-7 is created, so the script runs anywhere in a few minutes:
random weights give chance-level semantic retrieval, so only the TF-IDF row and the index recalls mean
anything then. Pass a real checkpoint (e.g. RWKV-x070-World-0.1B) for real numbers::

    python bench/retrieval_eval.py                                   # random tiny model, ~2-4 min on 2 cores
    python bench/retrieval_eval.py --model RWKV-x070-World-0.1B.pth --chunk-len 256
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

#: words of at least two letters/digits, lower-cased, for TF-IDF
_WORD = re.compile(r"[a-z0-9][a-z0-9']+")
_LETTERS = re.compile(r"[A-Za-z ]")
_NOT_PROSE = ("```", "    ", "\t", ">>>", "|", "#", "<", "[", "!", "..", "=", "-", "*", "+", "$")


# ---------------------------------------------------------------------------------------------
# Corpus


@dataclass
class Source:
    """The README of one installed distribution."""

    name: str
    licence: str
    text: str


@dataclass
class Doc:
    doc_id: str
    source: str
    paragraphs: list[str]


@dataclass
class Query:
    text: str
    doc_id: str


def installed_readmes(min_chars: int) -> list[Source]:
    """The long descriptions of the installed distributions, one per name, longest first."""
    seen: dict[str, Source] = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = (meta.get("Name") or "").strip()
        text = (meta.get_payload() or meta.get("Description") or "").strip()
        if not name or len(text) < min_chars or name.lower() in seen:
            continue
        licence = meta.get("License-Expression") or _first_line(meta.get("License")) or _classifier_licence(meta)
        seen[name.lower()] = Source(name, licence or "unknown", text)
    return sorted(seen.values(), key=lambda s: (-len(s.text), s.name))


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0][:60] if text and text.strip() else ""


def _classifier_licence(meta) -> str:
    found = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return ", ".join(found)


def paragraphs_of(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]


def is_prose(paragraph: str, min_chars: int) -> bool:
    """Whether a paragraph looks like running English text (not code, tables, lists or markup)."""
    if len(paragraph) < min_chars or paragraph.startswith(_NOT_PROSE):
        return False
    letters = len(_LETTERS.findall(paragraph))
    return letters >= 0.85 * len(paragraph) and len(paragraph.split()) >= 20


def split_documents(sources: list[Source], doc_chars: int, max_parts: int) -> list[Doc]:
    """Each README cut at paragraph boundaries into documents of at most ``doc_chars`` characters."""
    docs = []
    for source in sources:
        parts: list[list[str]] = [[]]
        for paragraph in paragraphs_of(source.text):
            if parts[-1] and sum(len(p) + 2 for p in parts[-1]) + len(paragraph) > doc_chars:
                parts.append([])
            parts[-1].append(paragraph[:doc_chars])
        for i, part in enumerate(parts[:max_parts]):
            docs.append(Doc(f"{_slug(source.name)}-{i + 1}.txt", source.name, part))
    return docs


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def hold_out(docs: list[Doc], per_doc: int, min_chars: int, rng: random.Random) -> tuple[list[Doc], list[Query]]:
    """Remove up to ``per_doc`` prose paragraphs (never the first) from each document; they become queries.
    Documents left with less than half their text are not used for queries."""
    queries = []
    for doc in docs:
        candidates = [i for i, p in enumerate(doc.paragraphs) if i > 0 and is_prose(p, min_chars)]
        chosen = sorted(rng.sample(candidates, min(per_doc, len(candidates))))
        removed = sum(len(doc.paragraphs[i]) for i in chosen)
        if not chosen or removed > 0.5 * sum(len(p) for p in doc.paragraphs):
            continue
        queries.extend(Query(doc.paragraphs[i], doc.doc_id) for i in chosen)
        doc.paragraphs = [p for i, p in enumerate(doc.paragraphs) if i not in chosen]
    return docs, queries


def write_corpus(docs: list[Doc], directory: Path) -> None:
    directory.mkdir(parents=True)
    for doc in docs:
        (directory / doc.doc_id).write_text("\n\n".join(doc.paragraphs) + "\n")


# ---------------------------------------------------------------------------------------------
# Model and run


def random_model(path: Path, n_layer: int, n_embd: int) -> Path:
    """A random RWKV-7 checkpoint with the World vocabulary's size."""
    from docstream.testing.checkpoints import save_random_checkpoint

    lora = {"decay": 16, "iclr": 16, "value": 16, "gate": 16}
    return save_random_checkpoint(path, "7", n_layer=n_layer, n_embd=n_embd, head_size=min(64, n_embd),
                                  vocab_size=65536, seed=0, lora=lora)


def run_docstream(args: argparse.Namespace, model: Path, tokenizer: Path, corpus: Path, out: Path) -> float:
    """Stream the corpus into ``out``; returns the seconds it took."""
    from docstream.store.config import build_config
    from docstream.stream.run import run

    config = build_config(None, dict(model=model, tokenizer=tokenizer, input=corpus, out=out, chunk_len=args.chunk_len,
                                     batch_size=args.batch_size, snapshot_every=64, commit_every=4096,
                                     device=args.device, quiet=False))
    summary = run(config)
    print("\n".join(summary.lines(out)))
    return summary.seconds


# ---------------------------------------------------------------------------------------------
# Scoring


def doc_ranking(chunk_scores: list[tuple[int, float]], chunk_docs: np.ndarray) -> list[str]:
    """Documents in the order of their best chunk (chunk_scores already best first)."""
    order: dict[str, None] = {}
    for chunk, _ in chunk_scores:
        order.setdefault(str(chunk_docs[chunk]), None)
    return list(order)


def retrieval_metrics(rankings: list[list[str]], queries: list[Query]) -> dict[str, float]:
    """recall@1, recall@10 and MRR of the true documents in ``rankings``."""
    ranks = [r.index(q.doc_id) + 1 if q.doc_id in r else math.inf for r, q in zip(rankings, queries)]
    n = max(len(ranks), 1)
    return {"recall@1": sum(r <= 1 for r in ranks) / n, "recall@10": sum(r <= 10 for r in ranks) / n,
            "MRR": sum(1 / r for r in ranks) / n}


class TfIdf:
    """Sparse TF-IDF (sublinear tf, smooth idf, L2-normalized) over a list of texts, with numpy only."""

    def __init__(self, texts: list[str]):
        counts = [Counter(_WORD.findall(t.lower())) for t in texts]
        df = Counter(term for c in counts for term in c)
        n = len(texts)
        self.idf = {term: math.log((1 + n) / (1 + d)) + 1 for term, d in df.items()}
        self.n = n
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for row, c in enumerate(counts):
            weights = self._weights(c)
            for term, w in weights.items():
                ids, ws = postings.setdefault(term, ([], []))
                ids.append(row)
                ws.append(w)
        self.postings = {t: (np.array(i), np.array(w)) for t, (i, w) in postings.items()}

    def _weights(self, counts: Counter) -> dict[str, float]:
        raw = {t: (1 + math.log(c)) * self.idf[t] for t, c in counts.items() if t in self.idf}
        norm = math.sqrt(sum(v * v for v in raw.values())) or 1.0
        return {t: v / norm for t, v in raw.items()}

    def search(self, text: str, k: int) -> list[tuple[int, float]]:
        scores = np.zeros(self.n)
        for term, w in self._weights(Counter(_WORD.findall(text.lower()))).items():
            ids, ws = self.postings[term]
            scores[ids] += w * ws
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in top]


def chunk_texts(corpus: Path, tokenizer, rows) -> list[str]:
    """The text of each chunk row, decoding token slices of each document's token stream once."""
    from docstream.corpus import Document, iter_corpus
    from docstream.corpus.chunker import iter_tokens

    tokens = {item.doc_id: [t for ids in iter_tokens(item, tokenizer) for t in ids]
              for item in iter_corpus(corpus) if isinstance(item, Document)}
    return [tokenizer.decode(tokens[str(d)][s:e]) for d, s, e in zip(rows.doc_id, rows.token_start, rows.token_end)]


def approximate_factories(n_vectors: int, dimension: int) -> list[tuple[str, str, str | None]]:
    """(label, factory, search params) of the approximate indexes that ``n_vectors`` can train."""
    from docstream.tasks.index import POINTS_PER_CENTROID

    found = []
    nlist = 1 << int(math.log2(max(n_vectors // POINTS_PER_CENTROID, 1)))
    nlist = min(nlist, 256)
    if nlist >= 4:
        found.append((f"IVF{nlist} nprobe=1", f"IVF{nlist},Flat", "nprobe=1"))
        found.append((f"IVF{nlist} nprobe={max(1, nlist // 4)}", f"IVF{nlist},Flat", f"nprobe={max(1, nlist // 4)}"))
    found.append(("HNSW32", "HNSW32", None))
    m = next((m for m in (16, 8, 4, 2) if dimension % m == 0), 1)
    if n_vectors >= POINTS_PER_CENTROID * 16:
        found.append((f"PQ{m}x4", f"PQ{m}x4", None))
    return found


def index_recall(vectors: np.ndarray, queries: np.ndarray, factory: str, params: str | None,
                 exact: list[list[tuple[int, float]]], k: int = 10) -> float:
    """Mean overlap of the approximate index's top ``k`` chunks with exact search's top ``k``."""
    from docstream.tasks.index import build_index, search_index

    found = search_index(build_index(vectors, factory), queries, k, params=params)
    overlap = [len({i for i, _ in a} & {i for i, _ in e[:k]}) / min(k, len(e)) for a, e in zip(found, exact)]
    return float(np.mean(overlap))


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="RWKV checkpoint (default: create a small random RWKV-7)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer file (default: the World vocabulary from `rwkv`)")
    p.add_argument("--work", type=Path, help="new or empty directory for the corpus and run (default: a temp dir)")
    p.add_argument("--chunk-len", type=int, default=64, help="tokens per chunk (default 64)")
    p.add_argument("--batch-size", type=int, default=16, help="documents streamed at once (default 16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--doc-chars", type=int, default=3000, help="longest document in characters (default 3000)")
    p.add_argument("--max-parts", type=int, default=4, help="documents cut from one README at most (default 4)")
    p.add_argument("--max-docs", type=int, default=150, help="documents at most (default 150)")
    p.add_argument("--queries-per-doc", type=int, default=2, help="paragraphs held out per document (default 2)")
    p.add_argument("--min-query-chars", type=int, default=150, help="shortest held-out paragraph (default 150)")
    p.add_argument("--random-layers", type=int, default=2, help="layers of the random model (default 2)")
    p.add_argument("--random-width", type=int, default=64, help="width of the random model (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the temp work directory")
    return p.parse_args(argv)


def prepare_work(args: argparse.Namespace) -> tuple[Path, bool]:
    """The work directory, and whether it is a temp dir to remove afterwards."""
    if args.work is None:
        return Path(tempfile.mkdtemp(prefix="docstream-retrieval-")), not args.keep
    if args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"--work {args.work} is not empty; give a new or empty directory")
    args.work.mkdir(parents=True, exist_ok=True)
    return args.work, False


def build_corpus(args: argparse.Namespace, corpus: Path) -> list[Query]:
    """Write the documents (held-out paragraphs removed) to ``corpus``; return the queries."""
    rng = random.Random(args.seed)
    sources = installed_readmes(min_chars=1000)
    if not sources:
        raise SystemExit("no installed distribution has a README of 1000+ characters to build a corpus from")
    docs = split_documents(sources, args.doc_chars, args.max_parts)
    docs = sorted(rng.sample(docs, min(args.max_docs, len(docs))), key=lambda d: d.doc_id)
    docs, queries = hold_out(docs, args.queries_per_doc, args.min_query_chars, rng)
    write_corpus(docs, corpus)
    used = sorted({d.source for d in docs})
    licences = {s.name: s.licence for s in sources}
    print(f"corpus: {len(docs)} documents ({sum(len(p) for d in docs for p in d.paragraphs)} characters) from "
          f"the READMEs of {len(used)} installed packages; {len(queries)} held-out paragraphs as queries")
    print("sources (licence): " + "; ".join(f"{name} ({licences[name]})" for name in used))
    return queries


def evaluate(args: argparse.Namespace, out: Path, corpus: Path, queries: list[Query]) -> None:
    from docstream.model.pooling import POOLINGS
    from docstream.tasks.embed import QueryEmbedder, chunk_vectors
    from docstream.tasks.index import build_index, search_index

    embedder = QueryEmbedder(out)
    start = time.perf_counter()
    query_vectors = embedder.embed_batch([q.text for q in queries], batch_size=args.batch_size, progress=True)
    print(f"embedded {len(queries)} queries in {time.perf_counter() - start:.1f} s")
    quality: dict[str, dict[str, float]] = {}
    approx: dict[str, dict[str, float]] = {}
    rows = None
    for pooling in POOLINGS:
        rows = chunk_vectors(out, pooling)
        depth = min(len(rows), 1000)
        exact = search_index(build_index(rows.vectors), query_vectors[pooling], depth)
        quality[pooling] = retrieval_metrics([doc_ranking(e, rows.doc_id) for e in exact], queries)
        approx[pooling] = {label: index_recall(rows.vectors, query_vectors[pooling], factory, params, exact)
                           for label, factory, params in approximate_factories(len(rows), rows.dimension)}
    texts = chunk_texts(corpus, embedder.tokenizer, rows)
    tfidf = TfIdf(texts)
    quality["TF-IDF (baseline)"] = retrieval_metrics(
        [doc_ranking(tfidf.search(q.text, min(len(texts), 1000)), rows.doc_id) for q in tqdm(queries, desc="tf-idf")],
        queries)
    n_docs = len(set(rows.doc_id))
    print(f"\n{len(rows)} chunks of {args.chunk_len} tokens in {n_docs} documents, {rows.dimension}-d vectors; "
          f"chance recall@1 = {1 / n_docs:.3f}, recall@10 = {min(10 / n_docs, 1):.3f}\n")
    print_table("retrieval (document level)", ["recall@1", "recall@10", "MRR"], quality)
    labels = list(next(iter(approx.values())))
    print()
    print_table("approximate index recall@10 vs exact Flat (chunk level)", labels, approx)


def print_table(title: str, columns: list[str], rows: dict[str, dict[str, float]]) -> None:
    width = max(len(title), *(len(r) for r in rows))
    widths = [max(len(c), 6) for c in columns]
    print(title.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for name, values in rows.items():
        print(name.ljust(width) + "  " + "  ".join(f"{values[c]:.3f}".rjust(w) for c, w in zip(columns, widths)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from docstream.tokenizer import default_world_vocab_path

    work, remove = prepare_work(args)
    try:
        queries = build_corpus(args, work / "corpus")
        if args.model is None:
            model = random_model(work / "random7.pth", args.random_layers, args.random_width)
            print(f"WARNING: no --model given, using a random RWKV-7 ({args.random_layers} layers, width "
                  f"{args.random_width}): random weights give chance-level semantic retrieval; only the TF-IDF "
                  f"row and the index recalls are meaningful", file=sys.stderr)
        else:
            model = args.model
        tokenizer = args.tokenizer or default_world_vocab_path()
        seconds = run_docstream(args, model, tokenizer, work / "corpus", work / "out")
        print(f"docstream run took {seconds:.1f} s")
        evaluate(args, work / "out", work / "corpus", queries)
    finally:
        if remove:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
