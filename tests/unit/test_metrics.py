"""Ranking and classification metrics against hand-computed cases and brute force over
every order of tied items."""

from itertools import permutations

import numpy as np
import pytest

from polymodal.eval.metrics import (
    Ranking,
    balanced_accuracy,
    confusion_matrix,
    first_positive_rank,
    mean_average_precision,
    mean_rank,
    mean_reciprocal_rank,
    median_rank,
    ndcg_at_k,
    per_class_accuracy,
    precision_at_k,
    recall_at_k,
    top_k_accuracy,
    true_recall_at_k,
)
from polymodal.eval.retrieval import retrieval_metrics


def test_recall_and_rank_without_ties() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    positives = np.array([[False, False, True], [True, False, False]])
    # query 0: positive ranked 2nd; query 1: positive ranked 3rd.
    assert recall_at_k(scores, positives, 1) == 0.0
    assert recall_at_k(scores, positives, 2) == 0.5
    assert recall_at_k(scores, positives, 3) == 1.0
    assert first_positive_rank(scores, positives).tolist() == [2.0, 3.0]


def test_any_positive_counts() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.7]])
    positives = np.array([[False, True, True, False]])
    assert recall_at_k(scores, positives, 2) == 1.0  # the 0.8 positive is second
    assert first_positive_rank(scores, positives).tolist() == [2.0]


def test_ties_are_averaged_over_orders() -> None:
    # One positive tied with two negatives at the top: ranks 1, 2, 3 equally likely.
    scores = np.array([[0.5, 0.5, 0.5, 0.1]])
    positives = np.array([[False, True, False, False]])
    assert recall_at_k(scores, positives, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, positives, 2) == pytest.approx(2 / 3)
    assert recall_at_k(scores, positives, 3) == 1.0
    assert first_positive_rank(scores, positives).tolist() == [2.0]
    # Two positives tied with one negative: P(first of 3 is negative) = 1/3 -> R@1 = 2/3.
    two = np.array([[True, True, False, False]])
    assert recall_at_k(scores, two, 1) == pytest.approx(2 / 3)
    assert first_positive_rank(scores, two).tolist() == pytest.approx([4 / 3])


def test_results_do_not_depend_on_item_order() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (20, 12)).astype(float)  # many ties
    positives = rng.random((20, 12)) < 0.2
    positives[:, 0] = True
    perm = rng.permutation(12)
    for k in (1, 3, 5):
        assert recall_at_k(scores, positives, k) == pytest.approx(recall_at_k(scores[:, perm], positives[:, perm], k))


def test_queries_without_positives_are_an_error() -> None:
    with pytest.raises(ValueError, match="at least one positive"):
        recall_at_k(np.zeros((1, 2)), np.zeros((1, 2), dtype=bool), 1)


def test_retrieval_with_several_captions_per_image() -> None:
    images = np.eye(3)  # three one-hot image embeddings
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1], [0.8, 0, 0.2]], dtype=float)
    image_groups, text_groups = np.array([0, 1, 2]), np.array([0, 0, 1, 2, 2])
    m = retrieval_metrics(images, texts, image_groups, text_groups)
    # Caption 4 ("mostly image 0") belongs to image 2: the only text->image miss at R@1.
    assert m["t2i_r1"] == pytest.approx(80.0) and m["t2i_r5"] == 100.0
    # image 2's best caption (3) is its own; every image finds one of its captions first.
    assert m["i2t_r1"] == 100.0 and m["i2t_median_rank"] == 1.0
    assert m["mean_recall"] == pytest.approx((80 + 100 + 100 + 100 + 100 + 100) / 6)


def test_model_selection_prefers_low_ranks_and_high_recalls() -> None:
    from polymodal.eval.retrieval import METRIC_NAMES, oriented

    assert oriented("t2i_median_rank", 3.0) > oriented("t2i_median_rank", 7.0)
    assert oriented("t2i_r1", 30.0) > oriented("t2i_r1", 20.0)
    assert "mean_recall" in METRIC_NAMES


# --------------------------------------------------------------------------- more ranking metrics



def test_hand_computed_ranking_without_ties() -> None:
    # Ranked: pos, neg, pos, neg, pos (scores 5..1).
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    positives = np.array([[True, False, True, False, True]])
    assert precision_at_k(scores, positives, 3) == pytest.approx(2 / 3)
    assert true_recall_at_k(scores, positives, 3) == pytest.approx(2 / 3)
    assert true_recall_at_k(scores, positives, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, positives, 1) == 1.0  # any positive: the first one
    assert mean_average_precision(scores, positives) == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
    assert mean_reciprocal_rank(scores, positives) == 1.0
    dcg = 1 + 1 / np.log2(4)  # positives at ranks 1 and 3 within the top 3
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg_at_k(scores, positives, 3) == pytest.approx(dcg / ideal)


def test_hand_computed_ranking_with_ties() -> None:
    # One positive tied with one negative for first place: rank 1 or 2, each with p = 1/2.
    scores = np.array([[0.7, 0.7, 0.1]])
    positives = np.array([[False, True, False]])
    assert mean_reciprocal_rank(scores, positives) == pytest.approx((1 + 1 / 2) / 2)
    assert mean_average_precision(scores, positives) == pytest.approx((1 + 1 / 2) / 2)
    assert precision_at_k(scores, positives, 1) == pytest.approx(1 / 2)
    assert ndcg_at_k(scores, positives, 1) == pytest.approx(1 / 2)
    assert ndcg_at_k(scores, positives, 2) == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert median_rank(scores, positives) == 1.5 and mean_rank(scores, positives) == 1.5


def _brute_force(scores: np.ndarray, positives: np.ndarray, k: int) -> dict[str, float]:
    """Every metric averaged over all orders consistent with the scores (ties permuted)."""
    n = scores.shape[0]
    orders = [p for p in permutations(range(n)) if all(scores[p[i]] >= scores[p[i + 1]] for i in range(n - 1))]
    totals = dict.fromkeys(("any", "true", "precision", "ap", "rr", "ndcg", "rank"), 0.0)
    num_pos = int(positives.sum())
    for order in orders:
        rel = positives[list(order)]
        ranks = np.flatnonzero(rel) + 1
        totals["any"] += float(ranks[0] <= k)
        totals["true"] += float((ranks <= k).sum() / num_pos)
        totals["precision"] += float((ranks <= k).sum() / k)
        totals["ap"] += float(np.mean([(i + 1) / r for i, r in enumerate(ranks)]))
        totals["rr"] += 1.0 / ranks[0]
        ideal = sum(1 / np.log2(i + 2) for i in range(min(num_pos, k)))
        totals["ndcg"] += float(sum(1 / np.log2(r + 1) for r in ranks if r <= k) / ideal)
        totals["rank"] += float(ranks[0])
    return {name: total / len(orders) for name, total in totals.items()}


def test_every_metric_equals_the_average_over_all_tie_orders() -> None:
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = 6
        scores = rng.integers(0, 3, (1, n)).astype(float)  # heavy ties
        positives = rng.random((1, n)) < 0.4
        positives[0, trial % n] = True
        ranking = Ranking(scores, positives)
        for k in (1, 2, 4):
            expected = _brute_force(scores[0], positives[0], k)
            assert ranking.recall_at(k)[0] == pytest.approx(expected["any"])
            assert ranking.true_recall_at(k)[0] == pytest.approx(expected["true"])
            assert ranking.precision_at(k)[0] == pytest.approx(expected["precision"])
            assert ranking.ndcg_at(k)[0] == pytest.approx(expected["ndcg"])
        assert ranking.average_precision()[0] == pytest.approx(expected["ap"])
        assert ranking.reciprocal_rank()[0] == pytest.approx(expected["rr"])
        assert ranking.first_positive_rank()[0] == pytest.approx(expected["rank"])


def test_chunked_ranking_matches_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import polymodal.eval.metrics as metrics

    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, (30, 9)).astype(float)
    positives = rng.random((30, 9)) < 0.3
    positives[:, 4] = True
    whole = Ranking(scores, positives)
    monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMENTS", 20)  # 2 queries per chunk
    chunked = Ranking(scores, positives)
    for name in ("average_precision", "reciprocal_rank", "first_positive_rank"):
        assert getattr(chunked, name)() == pytest.approx(getattr(whole, name)())
    assert chunked.ndcg_at(3) == pytest.approx(whole.ndcg_at(3))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Ranking(np.array([[np.nan, 1.0]]), np.array([[True, False]]))
    with pytest.raises(ValueError, match="shape"):
        Ranking(np.zeros((2, 3)), np.ones((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="k must be"):
        Ranking(np.zeros((1, 2)), np.ones((1, 2), dtype=bool)).recall_at(0)
    with pytest.raises(ValueError, match="labels must lie"):
        top_k_accuracy(np.zeros((2, 3)), np.array([0, 3]))


# --------------------------------------------------------------------------- classification


def test_classification_metrics_by_hand() -> None:
    scores = np.array([
        [0.9, 0.1, 0.0],  # class 0, right
        [0.2, 0.5, 0.3],  # class 0, wrong (predicts 1; 0 is third -> in top 3 only)
        [0.1, 0.8, 0.1],  # class 1, right
        [0.4, 0.4, 0.2],  # class 2, wrong (0 and 1 tie; 2 is third)
        [0.3, 0.3, 0.3],  # class 2, three-way tie: right with p = 1/3
    ])
    labels = np.array([0, 0, 1, 2, 2])
    assert top_k_accuracy(scores, labels, 1) == pytest.approx((1 + 0 + 1 + 0 + 1 / 3) / 5)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx((1 + 0 + 1 + 0 + 2 / 3) / 5)
    assert per_class_accuracy(scores, labels) == pytest.approx([0.5, 1.0, 1 / 6])
    assert balanced_accuracy(scores, labels) == pytest.approx((0.5 + 1.0 + 1 / 6) / 3)
    matrix = confusion_matrix(scores, labels)
    assert matrix[0].tolist() == [1.0, 1.0, 0.0]
    assert matrix[2] == pytest.approx([0.5 + 1 / 3, 0.5 + 1 / 3, 1 / 3])
    assert matrix.sum() == pytest.approx(5.0)


def test_balanced_accuracy_ignores_classes_without_samples() -> None:
    scores = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 0, 0])  # classes 1 and 2 have no samples
    assert np.isnan(per_class_accuracy(scores, labels)[1:]).all()
    assert balanced_accuracy(scores, labels) == pytest.approx(2 / 3)


def test_suggested_threshold_maximises_tpr_minus_fpr() -> None:
    from polymodal.eval.metrics import suggest_threshold

    matched = np.array([0.9, 0.8, 0.7, 0.3])
    unmatched = np.array([0.6, 0.5, 0.4, 0.2, 0.1, 0.75])
    best = suggest_threshold(matched, unmatched)
    # J = TPR - FPR: at 0.3 1 - 4/6, at 0.7 3/4 - 1/6 (the best), at 0.8 1/2 - 0
    assert best.threshold == 0.7
    assert best.true_positive_rate == 0.75 and best.false_positive_rate == pytest.approx(1 / 6)
    separated = suggest_threshold(np.array([0.5, 0.6]), np.array([0.1, 0.2]))
    assert separated.threshold == 0.5 and separated.false_positive_rate == 0.0
    with pytest.raises(ValueError, match="both"):
        suggest_threshold(np.array([]), np.array([0.1]))
