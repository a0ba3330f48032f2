"""Ranking and classification metrics as pure functions (numpy in, numbers out), tie-tolerant.

Scores are (Q, N): query q against item n; `positives` (Q, N) bool marks the correct
items. When items tie, a sort would decide the result; instead every metric here is its
exact expectation under a uniformly random order of tied items (McSherry & Najork,
"Computing information retrieval performance measures efficiently in the presence of
tied scores", ECIR 2008), so equal scores never make a number depend on sort order.

    ranking = Ranking(scores, positives)
    ranking.recall_at(10)         # per query: any positive in the top 10 (CLIP's R@10)
    ranking.true_recall_at(10)    # per query: fraction of its positives in the top 10
    recall_at_k(scores, positives, 10)   # the mean over queries, as a float

Classification metrics take scores (N, C) and integer labels (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

_MAX_CHUNK_ELEMENTS = 1 << 22  # queries are ranked in chunks of about this many scores


class Ranking:
    """The tie blocks of every positive of every query, computed once.

    For each positive item of each query: `above` items score strictly higher, it sits
    in a block of `tied` items with equal score (itself included), `tied_pos` of which
    are positives, and `pos_above` positives score strictly higher.
    """

    def __init__(self, scores: np.ndarray, positives: np.ndarray) -> None:
        scores = np.asarray(scores)
        positives = np.asarray(positives, dtype=bool)
        if scores.ndim != 2 or scores.shape != positives.shape:
            raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be the same (Q, N) shape")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN")
        self.num_positives = positives.sum(axis=1)
        if (self.num_positives == 0).any():
            raise ValueError(f"every query needs at least one positive (query {int(np.argmin(self.num_positives))} "
                             "has none)")
        self.num_queries, self.num_items = scores.shape
        if self.num_queries == 0 or self.num_items == 0:
            raise ValueError(f"nothing to rank: {self.num_queries} queries x {self.num_items} items")
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, self.num_items))
        parts = [_positive_blocks(scores[i:i + chunk], positives[i:i + chunk], i)
                 for i in range(0, self.num_queries, chunk)]
        self.query, self.above, self.tied, self.tied_pos, self.pos_above = (
            np.concatenate([p[f] for p in parts]) for f in range(5))
        # The first positive block of each query (pos_above == 0); all its positives agree.
        first = self.pos_above == 0
        _, index = np.unique(self.query[first], return_index=True)
        self._first = np.flatnonzero(first)[index]

    def _first_block(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(above, tied, tied_pos) of each query's first positive block."""
        return self.above[self._first], self.tied[self._first], self.tied_pos[self._first]

    def _per_query(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.query, weights=values, minlength=self.num_queries)

    def _expected_in_top(self, k: int) -> np.ndarray:
        """Expected number of positives in the top k, per query."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self._per_query(np.clip(k - self.above, 0, self.tied) / self.tied)

    def recall_at(self, k: int) -> np.ndarray:
        """Probability that some positive is in the top k (the CLIP-paper R@K)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        above, tied, tied_pos = self._first_block()
        # Without negatives tied with it, the first positive sits exactly at above + 1.
        out = (above < k).astype(np.float64)
        for q in np.flatnonzero((tied > tied_pos) & (above < k)):
            room = k - int(above[q])  # places in the top k left for the first positive block
            negatives = int(tied[q] - tied_pos[q])
            if room <= negatives:  # all `room` places go to the block's negatives with this probability
                out[q] = 1.0 - comb(negatives, room) / comb(int(tied[q]), room)
        return out

    def true_recall_at(self, k: int) -> np.ndarray:
        """Expected fraction of the query's positives in the top k."""
        return self._expected_in_top(k) / self.num_positives

    def precision_at(self, k: int) -> np.ndarray:
        """Expected fraction of the top k that are positives."""
        return self._expected_in_top(k) / k

    def first_positive_rank(self) -> np.ndarray:
        """Expected 1-based rank of the first positive."""
        above, tied, tied_pos = self._first_block()
        # The first of r positives among n shuffled items sits at (n + 1) / (r + 1) on average.
        return above + (tied + 1) / (tied_pos + 1)

    def reciprocal_rank(self) -> np.ndarray:
        """Expected 1 / rank of the first positive (the mean of this is MRR)."""
        above, tied, tied_pos = self._first_block()
        out = 1.0 / (above + 1.0)  # exact where no negative ties with the first positive block
        for q in np.flatnonzero(tied > tied_pos):
            a, n, r = int(above[q]), int(tied[q]), int(tied_pos[q])
            # P(first positive at block place j) = C(n - j, r - 1) / C(n, r)
            total = comb(n, r)
            out[q] = sum(comb(n - j, r - 1) / total / (a + j) for j in range(1, n - r + 2))
        return out

    def average_precision(self) -> np.ndarray:
        """Expected average precision: the mean over positives of the precision at their rank."""
        c, n = self.above.astype(np.float64), self.tied.astype(np.float64)
        r, p = self.tied_pos.astype(np.float64), self.pos_above.astype(np.float64)
        harmonic = _harmonic(self.num_items)
        h = harmonic[self.above + self.tied] - harmonic[self.above]  # sum over j of 1 / (c + j)
        # A positive at block place j (each with probability 1/n) has, on average,
        # p + 1 + (r - 1)(j - 1)/(n - 1) positives at or above it; sum those precisions.
        spread = np.divide((r - 1) * (n - (c + 1) * h), n - 1, out=np.zeros_like(n), where=n > 1)
        return self._per_query(((p + 1) * h + spread) / n) / self.num_positives

    def ndcg_at(self, k: int) -> np.ndarray:
        """Expected nDCG@k with binary relevance and the log2(rank + 1) discount."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, self.num_items + 2)))])
        lo = np.minimum(self.above, k)
        hi = np.minimum(self.above + self.tied, k)
        dcg = self._per_query((discount[hi] - discount[lo]) / self.tied)
        ideal = discount[np.minimum(self.num_positives, min(k, self.num_items))]
        return dcg / ideal


def _positive_blocks(scores: np.ndarray, positives: np.ndarray, offset: int) -> tuple[np.ndarray, ...]:
    """(query, above, tied, tied_pos, pos_above) for every positive of these queries."""
    rows, n = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=1)
    relevant = np.take_along_axis(positives, order, axis=1)
    place = np.broadcast_to(np.arange(n), (rows, n))
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    ends = np.ones((rows, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, place, 0), axis=1)  # first place of each block
    last = np.minimum.accumulate(np.where(ends, place, n)[:, ::-1], axis=1)[:, ::-1]
    inclusive = np.cumsum(relevant, axis=1)
    before = np.take_along_axis(inclusive - relevant, first, axis=1)  # positives above the block
    in_block = np.take_along_axis(inclusive, last, axis=1) - before
    q, j = np.nonzero(relevant)
    return q + offset, first[q, j], last[q, j] - first[q, j] + 1, in_block[q, j], before[q, j]


def _harmonic(n: int) -> np.ndarray:
    """H[m] = 1 + 1/2 + ... + 1/m for m = 0..n."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


# --------------------------------------------------------------------------- means over queries


def recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Fraction of queries with a positive among the top k ("R@K" of the CLIP paper)."""
    return float(Ranking(scores, positives).recall_at(k).mean())


def true_recall_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of their positives in the top k."""
    return float(Ranking(scores, positives).true_recall_at(k).mean())


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    return float(Ranking(scores, positives).precision_at(k).mean())


def mean_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    return float(Ranking(scores, positives).average_precision().mean())


def mean_reciprocal_rank(scores: np.ndarray, positives: np.ndarray) -> float:
    return float(Ranking(scores, positives).reciprocal_rank().mean())


def ndcg_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    return float(Ranking(scores, positives).ndcg_at(k).mean())


def first_positive_rank(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Expected 1-based rank of the first positive of each query (ties averaged)."""
    return Ranking(scores, positives).first_positive_rank()


def median_rank(scores: np.ndarray, positives: np.ndarray) -> float:
    return float(np.median(first_positive_rank(scores, positives)))


def mean_rank(scores: np.ndarray, positives: np.ndarray) -> float:
    return float(np.mean(first_positive_rank(scores, positives)))


# --------------------------------------------------------------------------- classification


def _one_hot(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}")
    return labels[:, None] == np.arange(scores.shape[1])[None, :]


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose label is among the k best-scoring classes."""
    return recall_at_k(scores, _one_hot(scores, labels), k)


def per_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 accuracy of each class (C,); NaN for classes without samples."""
    correct = Ranking(scores, _one_hot(scores, labels)).recall_at(1)
    counts = np.bincount(labels, minlength=scores.shape[1]).astype(np.float64)
    sums = np.bincount(labels, weights=correct, minlength=scores.shape[1])
    return np.divide(sums, counts, out=np.full(scores.shape[1], np.nan), where=counts > 0)


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class top-1 accuracy over the classes that have samples."""
    return float(np.nanmean(per_class_accuracy(scores, labels)))


def confusion_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C, C) expected counts: row = true class, column = predicted; a sample whose best
    score is shared by t classes adds 1/t to each of them."""
    _one_hot(scores, labels)
    best = scores == scores.max(axis=1, keepdims=True)
    share = best / best.sum(axis=1, keepdims=True)
    matrix = np.zeros((scores.shape[1], scores.shape[1]))
    np.add.at(matrix, labels, share)
    return matrix


# --------------------------------------------------------------------------- decision threshold


@dataclass(frozen=True)
class Threshold:
    threshold: float  # call a pair a match when its similarity is >= this
    true_positive_rate: float  # of matched pairs at or above it
    false_positive_rate: float  # of unmatched pairs at or above it


def suggest_threshold(matched: np.ndarray, unmatched: np.ndarray) -> Threshold:
    """The similarity cut that best separates matched from unmatched pairs: it maximises
    TPR - FPR (Youden's J, i.e. balanced accuracy), so it does not depend on how many
    more unmatched pairs there are. Ties between candidate cuts go to the highest cut."""
    matched = np.asarray(matched, dtype=np.float64).ravel()
    unmatched = np.asarray(unmatched, dtype=np.float64).ravel()
    if matched.size == 0 or unmatched.size == 0:
        raise ValueError("a threshold needs both matched and unmatched similarities")
    candidates = np.unique(np.concatenate([matched, unmatched]))
    # fraction of each set at or above each candidate
    tpr = 1.0 - np.searchsorted(np.sort(matched), candidates, side="left") / matched.size
    fpr = 1.0 - np.searchsorted(np.sort(unmatched), candidates, side="left") / unmatched.size
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[-1])
    return Threshold(float(candidates[best]), float(tpr[best]), float(fpr[best]))
