"""Top-k selection shared by every backend: blockwise exact search and stable merging, in
numpy or, where they are built, the compiled kernels of `native`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from polymodal.errors import StoreError
from polymodal.index import native

# Rows scored per block: 16k x 512 fp32 = 32 MB, cache-friendly and bounded memory.
BLOCK_ROWS = 16_384


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise StoreError(f"queries have shape {queries.shape}; this index holds {dim}-d vectors")
    return np.ascontiguousarray(queries)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int,
                score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product (or by `score(queries, block)` over stored codes), blockwise;
    ties go to the smaller id, so results are stable. Each block's scores fold into bounded
    heaps (the compiled kernels), or are cut to the block's own top k and merged (numpy)."""
    score = score or (lambda q, block: q @ block.T)
    nq = len(queries)
    if native.available():
        heaps = native.TopKHeaps(nq, k)
        for start in range(0, len(vectors), block_rows):
            heaps.push(score(queries, vectors[start:start + block_rows]), ids[start:start + block_rows])
        return heaps.result()
    best_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    best_ids = np.full((nq, k), -1, dtype=np.int64)
    for start in range(0, len(vectors), block_rows):
        scores, found = merge_top_k(score(queries, vectors[start:start + block_rows]),
                                    ids[start:start + block_rows], k)
        best_scores, best_ids = merge_top_k(np.concatenate([best_scores, scores], axis=1),
                                            np.concatenate([best_ids, found], axis=1), k)
    return best_scores, best_ids


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns per row, sorted by score descending, then id ascending; padding
    (-inf scores, id -1) sorts last. `ids` is (rows, n), or (n,) shared by every row."""
    rows, n = scores.shape
    if ids.ndim == 1:
        ids = np.broadcast_to(ids, scores.shape)  # a view: nothing is copied
    if n > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top, top_ids = np.take_along_axis(scores, part, axis=1), np.take_along_axis(ids, part, axis=1)
        # argpartition splits a tie at the k-th score arbitrarily; those rows (rare for float
        # scores, common for Hamming ones) pick among every tied column by id
        kth = top.min(axis=1)
        for row in np.flatnonzero(np.count_nonzero(scores >= kth[:, None], axis=1) > k):
            columns = np.flatnonzero(scores[row] >= kth[row])
            order = np.lexsort((_id_key(ids[row, columns]), -scores[row, columns]))[:k]
            top[row], top_ids[row] = scores[row, columns[order]], ids[row, columns[order]]
        scores, ids = top, top_ids
    order = np.lexsort((_id_key(ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _id_key(ids: np.ndarray) -> np.ndarray:
    """Sort key of ids: padding (-1) after every real id."""
    return np.where(ids < 0, np.iinfo(np.int64).max, ids)
