"""Reciprocal rank fusion: scores by hand, agreement beats one top rank, ties are fully determined."""
from __future__ import annotations

import pytest

from docstream.tasks.fusion import RRF_K, leading_gap, reciprocal_rank_fusion


def test_scores_are_sums_of_reciprocal_ranks():
    fused = reciprocal_rank_fusion({"lexical": ["a", "b", "c"], "dense": ["c", "a"]})
    scores = {f.key: f.score for f in fused}
    assert scores == pytest.approx({"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61})
    assert [f.key for f in fused] == ["a", "c", "b"]
    assert {f.key: f.ranks for f in fused} == {"a": {"lexical": 1, "dense": 2}, "b": {"lexical": 2},
                                               "c": {"lexical": 3, "dense": 1}}
    assert RRF_K == 60


def test_agreement_outranks_a_single_first_place():
    fused = reciprocal_rank_fusion({"lexical": ["solo", "both"], "dense": ["x", "both"]})
    assert fused[0].key == "both"


def test_ties_go_to_the_better_best_rank_then_the_earlier_retriever():
    fused = reciprocal_rank_fusion({"lexical": ["a", "b"], "dense": ["c", "d"]})
    # a and c tie (1/61), b and d tie (1/62): the lexical ranking is listed first
    assert [f.key for f in fused] == ["a", "c", "b", "d"]
    fused = reciprocal_rank_fusion({"dense": ["c", "d"], "lexical": ["a", "b"]})
    assert [f.key for f in fused] == ["c", "a", "d", "b"]


def test_limit_and_k_and_empty_rankings():
    assert [f.key for f in reciprocal_rank_fusion({"one": ["a", "b", "c"]}, limit=2)] == ["a", "b"]
    assert reciprocal_rank_fusion({"one": [], "two": []}) == []
    fused = reciprocal_rank_fusion({"one": ["a", "b"], "two": ["b"]}, k=0)
    assert fused[0].key == "b" and fused[0].score == pytest.approx(1 / 2 + 1)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="ranks 'a' twice"):
        reciprocal_rank_fusion({"one": ["a", "a"]})
    with pytest.raises(ValueError, match="k must be >= 0"):
        reciprocal_rank_fusion({"one": ["a"]}, k=-1)


def test_weights_scale_each_retrievers_share():
    rankings = {"lexical": ["a", "b"], "dense": ["b", "a"]}
    assert [f.key for f in reciprocal_rank_fusion(rankings)] == ["a", "b"]  # a tie, lexical listed first
    fused = reciprocal_rank_fusion(rankings, weights={"dense": 2.0})
    assert [f.key for f in fused] == ["b", "a"] and fused[0].score == pytest.approx(1 / 62 + 2 / 61)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        reciprocal_rank_fusion(rankings, weights={"dense": -1.0})


def test_leading_gap_compares_the_best_two_groups():
    assert leading_gap([("a", 10.0), ("a", 9.0), ("b", 6.0), ("c", 1.0)]) == pytest.approx(0.4)  # a's best vs b's
    assert leading_gap([("a", 10.0), ("a", 2.0)]) == 1.0  # one document alone
    assert leading_gap([("a", 5.0), ("b", 5.0)]) == 0.0
    assert leading_gap([]) == 0.0 and leading_gap([("a", 0.0), ("b", 0.0)]) == 0.0
