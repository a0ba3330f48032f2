"""The compiled exact-search kernels (`_scan.c`), behind the same contract as the numpy
path in `topk.py`: results sorted by score descending, then id ascending, padded with
(-inf, -1) where fewer than k exist.

    scan_float32(queries, codes, k)              # fused: inner products and top k in one pass
    scan_int8(scaled_queries, codes, k)          # float query x int8 codes
    scan_hamming(query_words, code_words, k)     # -hamming distance, top k
    heaps = TopKHeaps(nq, k); heaps.push(scores, ids); heaps.result()   # scores from elsewhere

A fused scan reads each code once and keeps only what beats the k-th result so far, so one
query runs at memory speed and no score array the size of the collection is made. Ids are
int64 below 2**63 - 1 (the heaps' padding); the stores' ids are.
`available()` is False where the extension was not built (no C compiler at install time) or
`POLYMODAL_NATIVE=0` is set; callers then take the numpy path, which the tests hold the
kernels to.
"""

from __future__ import annotations

import numpy as np
import torch

from polymodal.compiled import CompiledExtension

try:
    from polymodal.index import _scan  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the numpy path serves
    _scan = None

PADDING_ID = np.iinfo(np.int64).max  # what the C heaps hold for "no result yet"
ISAS = ("auto", "avx512", "avx2", "generic")

_extension = CompiledExtension(_scan, "the compiled search kernels")
available = _extension.available  # built and not switched off
disabled = _extension.disabled  # the numpy path for the duration (parity tests, reference timings)
_module = _extension.module


isa = _extension.isa  # the widest kernels in use: 'avx512', 'avx2', 'generic', or 'none' without the extension


def set_isa(name: str) -> None:
    """Cap the kernels: 'avx512', 'avx2' or 'generic' (for tests and comparisons); 'auto' picks
    the widest the CPU has."""
    if name not in ISAS:
        raise ValueError(f"unknown kernel level {name!r}; one of {', '.join(ISAS)}")
    _module().set_isa(name)


def threads() -> int:
    """Scan threads: torch's setting (OMP_NUM_THREADS, torch.set_num_threads), so one knob
    sets both."""
    return max(1, torch.get_num_threads())


def _queries(array: np.ndarray, dtype: type) -> np.ndarray:
    """Queries as C-contiguous, aligned `dtype` rows (floats of any width are converted)."""
    array = np.asarray(array)
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise ValueError(f"queries must be {np.dtype(dtype)}, not {array.dtype}")
    return _rows(np.require(array, dtype, ["C", "A"]), "queries")


def _codes(array: np.ndarray, dtype: type) -> np.ndarray:
    """Stored codes, which are never converted: a cast would copy the whole collection, and
    a wrong type (uint8 for int8) would be read as something else."""
    array = np.asarray(array)
    if array.dtype != dtype:
        raise ValueError(f"codes must be {np.dtype(dtype)}, not {array.dtype}")
    return _rows(np.require(array, dtype, ["C", "A"]), "codes")


def _ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be {n} integers, not {ids.dtype} of shape {ids.shape}")
    return np.require(ids, np.int64, ["C", "A"])


def _rows(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-d, not of shape {array.shape}")
    return array


def _scan_codes(kind: str, queries: np.ndarray, codes: np.ndarray, k: int, ids: np.ndarray | None,
                rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if queries.shape[1] != codes.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} columns, the codes {codes.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if rows is not None:
        rows = np.asarray(rows)
        rows = _ids(rows, rows.shape[0] if rows.ndim == 1 else -1)  # C checks 0 <= row < len(codes)
    nq, n = len(queries), len(codes) if rows is None else len(rows)
    if ids is not None:
        ids = _ids(ids, n)
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_ids = np.empty((nq, k), dtype=np.int64)
    scan = _module()
    scan.scan(getattr(scan, "KIND_" + kind), queries, codes, rows, ids, nq, n, len(codes), codes.shape[1], k,
              threads(), out_scores, out_ids)
    return out_scores, out_ids


def scan_float32(queries: np.ndarray, codes: np.ndarray, k: int, ids: np.ndarray | None = None,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top k of queries @ codes.T; ids default to the row numbers. `rows`: scan only those
    rows (a filter), read in place; ids[i] then names codes[rows[i]] (default: the row)."""
    return _scan_codes("F32", _queries(queries, np.float32), _codes(codes, np.float32), k, ids, rows)


def scan_int8(scaled_queries: np.ndarray, codes: np.ndarray, k: int, ids: np.ndarray | None = None,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top k of scaled_queries @ codes.T with int8 codes; the query is not rounded to int8
    (the VNNI kernel splits it into two int16 terms, exact to below float32 rounding)."""
    return _scan_codes("I8", _queries(scaled_queries, np.float32), _codes(codes, np.int8), k, ids, rows)


def scan_hamming(query_words: np.ndarray, code_words: np.ndarray, k: int, ids: np.ndarray | None = None,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k codes nearest in Hamming distance, as (-distance, id); packed bits as uint64 words."""
    return _scan_codes("HAMMING", _queries(query_words, np.uint64), _codes(code_words, np.uint64), k, ids, rows)


class TopKHeaps:
    """Running top k per query over blocks of scores computed elsewhere (a BLAS product per
    block): each block folds into bounded heaps in C, instead of a partition and a sort of
    the block in numpy."""

    def __init__(self, nq: int, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        self.nq, self.k = nq, k
        self.scores = np.full((nq, k), -np.inf, dtype=np.float32)
        self.ids = np.full((nq, k), PADDING_ID, dtype=np.int64)

    def push(self, scores: np.ndarray, ids: np.ndarray) -> None:
        scores = np.require(scores, np.float32, ["C", "A"])
        ids = _ids(ids, scores.shape[1] if scores.ndim == 2 else -1)
        if scores.shape != (self.nq, len(ids)):
            raise ValueError(f"scores have shape {scores.shape}, expected ({self.nq}, {len(ids)})")
        _module().push(self.scores, self.ids, scores, ids, self.nq, self.k, len(ids), threads())

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        out_scores = np.empty((self.nq, self.k), dtype=np.float32)
        out_ids = np.empty((self.nq, self.k), dtype=np.int64)
        _module().finish(self.scores, self.ids, self.nq, self.k, out_scores, out_ids)
        return out_scores, out_ids
