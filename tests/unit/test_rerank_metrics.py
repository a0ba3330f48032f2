"""Re-ranking metrics (eval/rerank.py) on hand-made score matrices: the candidates are
reordered by the match probabilities, everything else keeps its place, R@N is unchanged."""

import numpy as np
import pytest

from polymodal.eval.rerank import rerank_metrics, reranked_scores, top_candidates

# 3 text queries over 4 images; query q's positive is image q (image 3 is a distractor)
SCORES = np.array([[0.9, 0.1, 0.2, 0.8],   # positive (image 0) ranked 1st
                   [0.5, 0.4, 0.3, 0.9],   # positive (image 1) ranked 3rd
                   [0.1, 0.2, 0.3, 0.4]])  # positive (image 2) ranked 2nd
POSITIVES = np.eye(3, 4, dtype=bool)


def oracle(top: np.ndarray) -> np.ndarray:
    """P(match) = 1 for the query's own image."""
    return (top == np.arange(top.shape[0])[:, None]).astype(float)


def test_top_candidates_are_best_first_and_ties_keep_index_order() -> None:
    assert top_candidates(SCORES, 2).tolist() == [[0, 3], [3, 0], [3, 2]]
    assert top_candidates(np.array([[0.5, 0.7, 0.5, 0.5]]), 3).tolist() == [[1, 0, 2]]


def test_reranked_scores_order_candidates_by_probability_and_keep_the_rest() -> None:
    top = np.array([[3, 0, 1]])
    out = reranked_scores(np.array([[0.6, 0.5, 0.1, 0.9, 0.2]]), top, np.array([[0.2, 0.7, 0.2]]))
    assert np.argsort(-out[0], kind="stable").tolist() == [0, 3, 1, 4, 2]  # 0 by p; 3 before 1 (tie: order kept)


def test_an_oracle_lifts_every_candidate_positive_to_rank_one() -> None:
    m = rerank_metrics(SCORES, POSITIVES, 3, oracle)
    # dual encoder: ranks 1, 3, 2 -> R@1 1/3, R@5 1
    assert m["t2i_r1"] == pytest.approx(100 / 3) and m["t2i_r5"] == 100 and m["t2i_median_rank"] == 2
    assert m["rerank_t2i_r1"] == 100 and m["rerank_t2i_median_rank"] == 1
    assert m["gain_r1"] == pytest.approx(200 / 3) and m["gain_r5"] == 0
    assert m["candidate_recall"] == 100 and m["rerank_mean_recall"] == 100
    # only the top 2 re-ranked: query 1's positive (3rd) stays out of reach
    m2 = rerank_metrics(SCORES, POSITIVES, 2, oracle)
    assert m2["candidate_recall"] == pytest.approx(200 / 3) and m2["rerank_t2i_r1"] == pytest.approx(200 / 3)
    assert m2["rerank_t2i_median_rank"] == 1 and m2["t2i_r10"] == m2["rerank_t2i_r10"] == 100


def test_reranking_one_candidate_or_with_constant_probabilities_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((20, 30))
    positives = rng.random((20, 30)) < 0.1
    positives[np.arange(20), rng.integers(0, 30, 20)] = True
    for top_n, match in ((1, lambda top: rng.random(top.shape)), (10, lambda top: np.full(top.shape, 0.5))):
        m = rerank_metrics(scores, positives, top_n, match)
        for k in (1, 5, 10):
            assert m[f"rerank_t2i_r{k}"] == pytest.approx(m[f"t2i_r{k}"]), (top_n, k)


def test_an_adversary_pushes_positives_down_within_the_candidates_only() -> None:
    m = rerank_metrics(SCORES, POSITIVES, 2, lambda top: 1.0 - oracle(top))
    assert m["rerank_t2i_r1"] == 0 and m["rerank_t2i_r5"] == 100  # moved down, never out of the list


def test_bad_shapes_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="one non-empty"):
        rerank_metrics(SCORES, POSITIVES[:2], 2, oracle)
    with pytest.raises(ValueError, match="top_n"):
        rerank_metrics(SCORES, POSITIVES, 0, oracle)
    with pytest.raises(ValueError, match="match returned"):
        rerank_metrics(SCORES, POSITIVES, 2, lambda top: np.zeros(3))
