"""Re-ranking metrics (eval/rerank.py) on hand-made score matrices: the candidates are
reordered by the ITM log-odds plus the weighted dual-encoder score (or the log-odds alone),
everything else keeps its place, R@N is unchanged."""

import numpy as np
import pytest

from polymodal.eval.rerank import rerank_metrics, reranked_scores, top_candidates

# 3 text queries over 4 images; query q's positive is image q (image 3 is a distractor)
SCORES = np.array([[0.9, 0.1, 0.2, 0.8],   # positive (image 0) ranked 1st
                   [0.5, 0.4, 0.3, 0.9],   # positive (image 1) ranked 3rd
                   [0.1, 0.2, 0.3, 0.4]])  # positive (image 2) ranked 2nd
POSITIVES = np.eye(3, 4, dtype=bool)


def oracle(top: np.ndarray) -> np.ndarray:
    """Log-odds +10 for the query's own image, -10 for the others: sure of itself."""
    return np.where(top == np.arange(top.shape[0])[:, None], 10.0, -10.0)


def test_top_candidates_are_best_first_and_ties_keep_index_order() -> None:
    assert top_candidates(SCORES, 2).tolist() == [[0, 3], [3, 0], [3, 2]]
    assert top_candidates(np.array([[0.5, 0.7, 0.5, 0.5]]), 3).tolist() == [[1, 0, 2]]


def test_reranked_scores_order_candidates_by_their_scores_and_keep_the_rest() -> None:
    top = np.array([[3, 0, 1]])
    out = reranked_scores(np.array([[0.6, 0.5, 0.1, 0.9, 0.2]]), top, np.array([[0.2, 0.7, 0.2]]))
    assert np.argsort(-out[0], kind="stable").tolist() == [0, 3, 1, 4, 2]  # 0 first; 3 before 1 (tie: order kept)


def test_an_oracle_lifts_every_candidate_positive_to_rank_one() -> None:
    m = rerank_metrics(SCORES, POSITIVES, 3, oracle, dual_weight=1.0)
    # dual encoder: ranks 1, 3, 2 -> R@1 1/3, R@5 1
    assert m["t2i_r1"] == pytest.approx(100 / 3) and m["t2i_r5"] == 100 and m["t2i_median_rank"] == 2
    assert m["rerank_t2i_r1"] == 100 and m["rerank_t2i_median_rank"] == 1
    assert m["gain_r1"] == pytest.approx(200 / 3) and m["gain_r5"] == 0
    assert m["candidate_recall"] == 100 and m["rerank_mean_recall"] == 100
    # only the top 2 re-ranked: query 1's positive (3rd) stays out of reach
    m2 = rerank_metrics(SCORES, POSITIVES, 2, oracle, dual_weight=1.0)
    assert m2["candidate_recall"] == pytest.approx(200 / 3) and m2["rerank_t2i_r1"] == pytest.approx(200 / 3)
    assert m2["rerank_t2i_median_rank"] == 1 and m2["t2i_r10"] == m2["rerank_t2i_r10"] == 100


def test_reranking_one_candidate_or_with_constant_log_odds_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((20, 30))
    positives = rng.random((20, 30)) < 0.1
    positives[np.arange(20), rng.integers(0, 30, 20)] = True
    for top_n, match in ((1, lambda top: rng.random(top.shape)), (10, lambda top: np.full(top.shape, -0.7))):
        m = rerank_metrics(scores, positives, top_n, match, dual_weight=3.0)
        for k in (1, 5, 10):
            assert m[f"rerank_t2i_r{k}"] == pytest.approx(m[f"t2i_r{k}"]), (top_n, k)
            assert m[f"itm_t2i_r{k}"] == pytest.approx(m[f"t2i_r{k}"]), (top_n, k)


def test_the_reranking_score_adds_the_weighted_dual_score_to_the_log_odds() -> None:
    # query 1's candidates are images 3, 0, 1 (scores 0.9, 0.5, 0.4); the head favours its positive by 0.3
    match = lambda top: np.where(top == 1, 0.3, 0.0)  # noqa: E731
    weighted = rerank_metrics(SCORES[1:2], POSITIVES[1:2], 3, match, dual_weight=1.0)
    # 0.9 + 0, 0.5 + 0, 0.4 + 0.3 = 0.7: the positive moves from 3rd to 2nd, not past image 3
    assert weighted["rerank_t2i_median_rank"] == 2 and weighted["rerank_t2i_r1"] == 0
    assert weighted["itm_t2i_median_rank"] == 1  # by the log-odds alone it is first
    # a larger weight trusts the dual encoder more: 4 x 0.4 + 0.3 < 4 x 0.5, the order stays
    assert rerank_metrics(SCORES[1:2], POSITIVES[1:2], 3, match, dual_weight=4.0)["rerank_t2i_median_rank"] == 3


def test_an_adversary_pushes_positives_down_within_the_candidates_only() -> None:
    m = rerank_metrics(SCORES, POSITIVES, 2, lambda top: -oracle(top), dual_weight=1.0)
    assert m["rerank_t2i_r1"] == 0 and m["rerank_t2i_r5"] == 100  # moved down, never out of the list
    assert m["itm_t2i_r1"] == 0 and m["itm_t2i_r5"] == 100


def test_bad_shapes_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="one non-empty"):
        rerank_metrics(SCORES, POSITIVES[:2], 2, oracle, 1.0)
    with pytest.raises(ValueError, match="top_n"):
        rerank_metrics(SCORES, POSITIVES, 0, oracle, 1.0)
    with pytest.raises(ValueError, match="match returned"):
        rerank_metrics(SCORES, POSITIVES, 2, lambda top: np.zeros(3), 1.0)
