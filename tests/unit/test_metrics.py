"""Retrieval metrics against hand-computed cases, ties included."""

import numpy as np
import pytest

from polymodal.eval.metrics import first_positive_rank, recall_at_k
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
