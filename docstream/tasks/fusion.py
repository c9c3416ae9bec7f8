"""Reciprocal rank fusion: one ranking from several retrievers' rankings.

An item's fused score is the sum, over the retrievers that returned it, of ``1 / (k + rank)`` (ranks from
1). It needs no score calibration between retrievers (BM25 scores and cosine similarities are not
comparable), and ``k = 60`` -- the constant of the original paper (Cormack, Clarke and Buettcher, SIGIR
2009) and the default of OpenSearch, Pinecone and Chroma -- keeps one retriever's top hit from
outweighing agreement between retrievers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

__all__ = ["RRF_K", "Fused", "leading_gap", "reciprocal_rank_fusion"]

RRF_K = 60


@dataclass(frozen=True)
class Fused:
    """One fused item: its key, fused score, and the rank (from 1) each retriever that found it gave it."""

    key: Hashable
    score: float
    ranks: dict[str, int] = field(default_factory=dict)


def reciprocal_rank_fusion(rankings: Mapping[str, Sequence[Hashable]], limit: int | None = None,
                           k: int = RRF_K, weights: Mapping[str, float] | None = None) -> list[Fused]:
    """Fuse ``rankings`` (retriever name -> its keys, best first; a key at most once per ranking) into one list,
    best first, at most ``limit`` long. ``weights`` (retriever name -> weight, 1 for a retriever not named)
    scale each retriever's ``1 / (k + rank)``, as weighted RRF does in Elasticsearch and Vespa. Ties in fused
    score go to the item with the better best rank, then to the earlier retriever in ``rankings``' order,
    then to the earlier position there, so the result is fully determined by the input."""
    if k < 0:
        raise ValueError(f"the RRF constant k must be >= 0, got {k}")
    weights = dict(weights or {})
    if any(not w >= 0 for w in weights.values()):
        raise ValueError(f"fusion weights must be >= 0, got {weights}")
    ranks: dict[Hashable, dict[str, int]] = {}
    first_seen: dict[Hashable, tuple[int, int]] = {}
    for order, (name, keys) in enumerate(rankings.items()):
        for rank, key in enumerate(keys, 1):
            found = ranks.setdefault(key, {})
            if name in found:
                raise ValueError(f"retriever {name!r} ranks {key!r} twice")
            found[name] = rank
            first_seen.setdefault(key, (order, rank))
    fused = [Fused(key, sum(weights.get(name, 1.0) / (k + r) for name, r in found.items()), found)
             for key, found in ranks.items()]
    fused.sort(key=lambda f: (-f.score, min(f.ranks.values()), first_seen[f.key]))
    return fused if limit is None else fused[:limit]


def leading_gap(scored: Sequence[tuple[Hashable, float]]) -> float:
    """How far the best group stands out of one retriever's results: ``(s1 - s2) / s1`` for the best scores
    of the first and second distinct groups (documents, when each item is a chunk keyed by its document).
    ``scored`` is (group, score) best first, scores >= 0 (BM25's). 1 when one group alone was found, 0 when
    nothing scored above 0."""
    best: dict[Hashable, float] = {}
    for group, score in scored:
        best.setdefault(group, score)
        if len(best) == 2:
            break
    top = list(best.values())
    if not top or top[0] <= 0:
        return 0.0
    return 1.0 if len(top) == 1 else max(0.0, (top[0] - top[1]) / top[0])
