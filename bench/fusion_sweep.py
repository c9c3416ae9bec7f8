"""How the lexical and dense rankings are fused: weighted reciprocal rank fusion against convex
combinations of normalized scores, on the collections of ``bench/retrieval_eval.py``.

For each collection it reuses (or makes) the run that ``retrieval_eval.py`` makes, asks docstream's
``Searcher`` for the lexical (BM25) and the dense (built-in embedder) chunk hits of every query with their
scores (``--depth`` each), and fuses them offline in several ways:

* ``rrf-W``: what hybrid search does, ``1 / (60 + rank)`` summed, the dense ranking weighted ``W``;
* ``cc-minmax-A`` / ``cc-z-A``: ``A * lexical + (1 - A) * dense`` of scores normalized per query (min-max
  over each retriever's list, or z-scores); a chunk one retriever did not return takes that list's lowest
  normalized score (the convex combination of Bruch, Gai and Ingber, "An Analysis of Fusion Functions for
  Hybrid Retrieval", 2022).

Documents are ranked by their best chunk, as in ``retrieval_eval.py``; the table gives recall@10 / nDCG@10.
A variant is chosen on ``docstrings-dev`` only; the other collections are the test.

``--document-weight B`` (repeatable) sets the lexical index's ``document_weight`` (a chunk's BM25 score
plus B times its document's) before the lexical hits are asked for; with several, every variant is listed
once per weight, as ``B=<weight> <variant>``. B = 0 scores chunks alone.

    python bench/fusion_sweep.py --collection bench/out/beir/readmes --collection bench/out/beir/pydoc \\
        --collection bench/out/beir/debian --collection bench/out/beir/docstrings-dev
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from retrieval_eval import embedder_index, metrics, prepare_run, read_collection  # noqa: E402

Hits = list[tuple[tuple[str, int], float]]


def hits(out: Path, queries: list[str], depth: int, document_weight: float | None = None
         ) -> tuple[list[Hits], list[Hits]]:
    """Each query's lexical and dense chunk hits, ((doc id, chunk index), score), best first; the lexical ones
    with ``document_weight`` as the lexical index's document weight (None: docstream's)."""
    from docstream.tasks.search import Searcher

    def ranked(searcher: Searcher) -> list[Hits]:
        found = searcher.search_many(queries, k=depth, snippets=False)
        return [[((h.doc_id, h.chunk_index), h.score) for h in row] for row in found]

    lexical = Searcher(out, mode="lexical")
    if document_weight is not None:
        lexical.lexical.document_weight = document_weight
    embedder_index(out, None)
    return ranked(lexical), ranked(Searcher(out, mode="dense", pooling="embedder"))


def rrf(lexical: Hits, dense: Hits, weight: float) -> list:
    """What hybrid search does: docstream's reciprocal rank fusion, the dense ranking weighted ``weight``."""
    from docstream.tasks.fusion import reciprocal_rank_fusion

    rankings = {"lexical": [c for c, _ in lexical], "dense": [c for c, _ in dense]}
    return [f.key for f in reciprocal_rank_fusion(rankings, weights={"dense": weight})]


def normalized(found: Hits, how: str) -> dict:
    values = [s for _, s in found]
    if not values:
        return {}
    if how == "minmax":
        lo, hi = min(values), max(values)
        return {c: (s - lo) / (hi - lo) if hi > lo else 1.0 for c, s in found}
    mean = sum(values) / len(values)
    sd = (sum((s - mean) ** 2 for s in values) / len(values)) ** 0.5 or 1.0
    return {c: (s - mean) / sd for c, s in found}


def convex(lexical: Hits, dense: Hits, alpha: float, how: str) -> list:
    lex, den = normalized(lexical, how), normalized(dense, how)
    lex_floor, den_floor = min(lex.values(), default=0.0), min(den.values(), default=0.0)
    score = {c: alpha * lex.get(c, lex_floor) + (1 - alpha) * den.get(c, den_floor) for c in set(lex) | set(den)}
    return sorted(score, key=lambda chunk: (-score[chunk], chunk))


def gated(lexical: Hits, dense: Hits, weight: float, gap: float) -> list:
    """RRF whose dense weight is dropped for queries whose lexical winner stands out by ``gap`` or more."""
    from docstream.tasks.fusion import leading_gap

    return rrf(lexical, dense, 0.0 if leading_gap([(doc, s) for (doc, _), s in lexical]) >= gap else weight)


def protected(lexical: Hits, dense: Hits, weight: float, keep: int) -> list:
    """Lexical's first ``keep`` documents first, in its order; the rest by RRF."""
    first = list(dict.fromkeys(doc for (doc, _), _ in lexical))[:keep]
    fused = rrf(lexical, dense, weight)
    lead = [next(c for c in fused if c[0] == doc) for doc in first]
    return lead + [c for c in fused if c[0] not in first]


def reranked(lexical: Hits, dense: Hits, weight: float, gap: float, top: int) -> list:
    """BM25's first ``top`` documents, reordered by the gated fusion; then the rest of the fused list."""
    first = set(list(dict.fromkeys(doc for (doc, _), _ in lexical))[:top])
    fused = gated(lexical, dense, weight, gap)
    return [c for c in fused if c[0] in first] + [c for c in fused if c[0] not in first]


def variants() -> dict[str, Callable[[Hits, Hits], list]]:
    out: dict[str, Callable[[Hits, Hits], list]] = {
        "lexical": lambda lex, den: [c for c, _ in lex], "dense": lambda lex, den: [c for c, _ in den]}
    for weight in (0.1, 0.2, 0.5):
        out[f"rrf-{weight}"] = lambda lex, den, w=weight: rrf(lex, den, w)
    for weight in (0.2, 0.5):
        for gap in (0.1, 0.2, 0.3):
            out[f"gated-{weight}-{gap}"] = lambda lex, den, w=weight, g=gap: gated(lex, den, w, g)
        for top in (10, 20):
            out[f"rerank{top}-{weight}"] = lambda lex, den, w=weight, t=top: reranked(lex, den, w, 0.3, t)
            out[f"rerank{top}-{weight}-nogate"] = lambda lex, den, w=weight, t=top: reranked(lex, den, w, 2.0, t)
        for keep in (1, 3, 5):
            out[f"protect{keep}-{weight}"] = lambda lex, den, w=weight, k=keep: protected(lex, den, w, k)
    for how in ("minmax", "z"):
        for alpha in (0.5, 0.6, 0.7, 0.8, 0.9):
            out[f"cc-{how}-{alpha}"] = lambda lex, den, a=alpha, h=how: convex(lex, den, a, h)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", type=Path, action="append", required=True)
    p.add_argument("--work", type=Path, default=Path("bench/out/retrieval"), help="runs, as retrieval_eval.py")
    p.add_argument("--depth", type=int, default=100, help="chunk hits asked of each retriever")
    p.add_argument("--document-weight", type=float, action="append",
                   help="the lexical index's document weight (repeatable; default: docstream's)")
    args = p.parse_args()
    run_args = argparse.Namespace(model=None, tokenizer=None, chunk_len=256, work=args.work)
    weights = args.document_weight or [None]
    label = (lambda w, name: f"B={w:g} {name}") if len(weights) > 1 else (lambda w, name: name)
    table: dict[str, list[str]] = {label(w, name): [] for w in weights for name in variants()}
    names = []
    for directory in args.collection:
        collection = read_collection(directory)
        qids = sorted(collection.queries)
        queries, relevant = [collection.queries[q] for q in qids], [collection.qrels[q] for q in qids]
        out, _ = prepare_run(collection, run_args)
        names.append(collection.name)
        for weight in weights:
            lexical, dense = hits(out, queries, args.depth, weight)
            for name, fuse in variants().items():
                ranked = [list(dict.fromkeys(c[0] for c in fuse(lex, den))) for lex, den in zip(lexical, dense)]
                m = metrics(ranked, relevant)
                table[label(weight, name)].append(f"{m['recall@10']:.3f} / {m['nDCG@10']:.3f}")
    print("| fusion | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
