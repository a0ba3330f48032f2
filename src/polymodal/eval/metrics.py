"""Retrieval metrics as pure functions (numpy in, numbers out), tie-tolerant.

Scores are (Q, N): query q against item n; `positives` (Q, N) bool marks the correct
items. When a positive ties with negatives, sorting would decide the result; instead
every metric here is its expectation under a uniformly random order of tied items, so
equal scores never make a number depend on sort order.
"""

from __future__ import annotations

from math import comb

import numpy as np


def _tie_counts(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query, for the best-scoring positive: negatives scoring strictly higher, and
    negatives and positives scoring exactly as high."""
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive")
    best = np.where(positives, scores, -np.inf).max(axis=1, keepdims=True)  # (Q, 1)
    negatives = ~positives
    above = (negatives & (scores > best)).sum(axis=1)
    tied_neg = (negatives & (scores == best)).sum(axis=1)
    tied_pos = (positives & (scores == best)).sum(axis=1)
    return above, tied_neg, tied_pos


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Fraction of queries with a positive among the top k ("R@K" of the CLIP paper:
    any positive counts), averaged over random orders of tied scores."""
    above, tied_neg, tied_pos = _tie_counts(scores, positives)
    hits = []
    for a, tn, tp in zip(above, tied_neg, tied_pos, strict=True):
        room = k - a  # positions left for the tied block
        if room <= 0:
            hits.append(0.0)
        elif room > tn:
            hits.append(1.0)
        else:  # the first `room` of the tied block are all negatives with this probability
            hits.append(1.0 - comb(int(tn), int(room)) / comb(int(tn + tp), int(room)))
    return float(np.mean(hits))


def first_positive_rank(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Expected 1-based rank of the first positive of each query (ties averaged)."""
    above, tied_neg, tied_pos = _tie_counts(scores, positives)
    # The first of tp positives among tn + tp shuffled items sits at (tn + tp + 1) / (tp + 1).
    return above + (tied_neg + tied_pos + 1) / (tied_pos + 1)
