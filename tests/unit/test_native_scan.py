"""The compiled exact-search kernels (`polymodal.index.native`) against the numpy reference:
every kernel level the CPU has, odd widths that leave tails, several threads, ties, and
the errors a caller can cause."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from polymodal.index import native
from polymodal.index.backends import ExactBackend
from polymodal.index.topk import exact_top_k, merge_top_k

pytestmark = pytest.mark.skipif(native._scan is None, reason="the compiled kernels are not built here")

# Every level set_isa accepts; a CPU without one runs the next level down under its name.
LEVELS = ("auto", "avx2", "generic")


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    native.set_isa(request.param)
    yield request.param
    native.set_isa("auto")


@pytest.fixture
def four_threads() -> Iterator[None]:
    """More scan threads than cores: each thread's heaps are merged at the end."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def reference(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The numpy contract: score descending, then id ascending, padded with (-inf, -1)."""
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    found = np.broadcast_to(ids, scores.shape)[np.arange(len(scores))[:, None], order]
    top = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    if k > scores.shape[1]:
        pad = ((0, 0), (0, k - scores.shape[1]))
        top, found = np.pad(top, pad, constant_values=-np.inf), np.pad(found, pad, constant_values=-1)
    return top, found


def assert_same_top_k(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
                      atol: float) -> None:
    """Scores equal within atol; ids equal wherever the score is apart from its neighbours by
    more than atol (near-ties may fall either way under a different summation order)."""
    (scores, ids), (want_scores, want_ids) = got, want
    np.testing.assert_allclose(scores, want_scores, atol=atol, rtol=0)
    finite = np.where(np.isfinite(want_scores), want_scores, -1e30)
    gaps = np.abs(np.diff(finite, axis=1))
    apart = np.ones_like(finite, dtype=bool)
    apart[:, 1:] &= gaps > atol
    apart[:, :-1] &= gaps > atol
    np.testing.assert_array_equal(ids[apart], want_ids[apart])


@pytest.mark.parametrize("dim", [1, 7, 37, 64, 100, 512, 1000])
def test_float32_scan_matches_a_full_sort(level: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    codes = rng.standard_normal((1500, dim)).astype(np.float32)
    queries = rng.standard_normal((20, dim)).astype(np.float32)  # 20: more than one group of 16
    for k in (1, 10):
        got = native.scan_float32(queries, codes, k)
        assert_same_top_k(got, reference(queries.astype(np.float64) @ codes.T, np.arange(1500), k), atol=1e-4)


@pytest.mark.parametrize("dim", [1, 7, 37, 64, 100, 512, 1000, 5000])  # 5000: past the VNNI kernel's limit
def test_int8_scan_matches_float_scores_of_the_codes(level: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    codes = rng.integers(-127, 128, (1200, dim)).astype(np.int8)
    queries = rng.standard_normal((17, dim)).astype(np.float32) * 0.01
    truth = queries.astype(np.float64) @ codes.T.astype(np.float64)
    got = native.scan_int8(queries, codes, 10)
    assert_same_top_k(got, reference(truth, np.arange(1200), 10), atol=1e-5 * np.abs(truth).max())


def test_the_int8_query_is_not_rounded(level: str) -> None:
    """One large element and many tiny ones: rounding the query to one int16 term would zero
    the tiny ones; the VNNI kernel's second term keeps them."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-127, 128, (400, 256)).astype(np.int8)
    query = (rng.standard_normal((1, 256)) * 1e-6).astype(np.float32)
    query[0, 0] = 1.0
    codes[:, 0] = 5  # the large element adds the same to every score: the tiny ones decide
    truth = query.astype(np.float64) @ codes.T.astype(np.float64)
    scores, found = native.scan_int8(query, codes, 5)
    want_scores, want_ids = reference(truth, np.arange(400), 5)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_int8_queries_of_any_scale_and_with_infinities_score_alike_on_every_level(level: str) -> None:
    """The VNNI split scales the query by a power of two first (a query of 1e-38 keeps its
    precision) and leaves queries holding an infinity to the float kernels, which give them
    infinite scores as numpy does."""
    rng = np.random.default_rng(4)
    codes = rng.integers(-127, 128, (300, 64)).astype(np.int8)
    for scale in (1e-38, 1e-20, 1.0, 1e20):
        query = (rng.standard_normal((1, 64)) * scale).astype(np.float32)
        truth = query.astype(np.float64) @ codes.T.astype(np.float64)
        scores, found = native.scan_int8(query, codes, 5)
        want_scores, want_ids = reference(truth, np.arange(300), 5)
        np.testing.assert_array_equal(found, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    query = np.zeros((1, 64), np.float32)
    query[0, 0] = np.inf
    scores, found = native.scan_int8(query, codes, 3)
    positive = np.flatnonzero(codes[:, 0] > 0)
    assert found[0].tolist() == positive[:3].tolist() and np.isposinf(scores).all()


@pytest.mark.parametrize("words", [1, 3, 4, 8, 9, 16])
def test_hamming_scan_matches_a_full_sort_with_its_ties(level: str, words: int) -> None:
    rng = np.random.default_rng(words)
    codes = rng.integers(0, 2**63, (2000, words), dtype=np.uint64)
    codes[1000:1100] = codes[:100]  # exact duplicates: equal distances, the smaller id first
    queries = rng.integers(0, 2**63, (19, words), dtype=np.uint64)
    distances = np.bitwise_count(queries[:, None, :] ^ codes[None]).sum(axis=2)
    ids = rng.permutation(10_000)[:2000]  # ids in no order: ties still go to the smaller id
    for k in (1, 10, 64):
        scores, found = native.scan_hamming(queries, codes, k, ids)
        want_scores, want_ids = reference(-distances.astype(np.float32), ids, k)
        np.testing.assert_array_equal(found, want_ids)
        np.testing.assert_array_equal(scores, want_scores)


def test_several_threads_merge_their_results(four_threads: None) -> None:
    rng = np.random.default_rng(5)
    codes = rng.standard_normal((6000, 512)).astype(np.float32)  # 12 MB: four threads' worth
    codes[5999] = codes[0]  # the same best score at both ends, found by different threads
    queries = codes[[0, 3000]] + 0.01
    ids = np.arange(6000) + 100
    got = native.scan_float32(queries, codes, 7, ids)
    assert_same_top_k(got, reference(queries.astype(np.float64) @ codes.T, ids, 7), atol=1e-3)
    assert got[1][0, :2].tolist() == [100, 6099]


def test_fewer_codes_than_k_are_padded_and_nan_queries_find_nothing() -> None:
    codes = np.eye(3, dtype=np.float32)
    scores, found = native.scan_float32(np.array([[1.0, 2.0, 0.5]], np.float32), codes, 5)
    assert found.tolist() == [[1, 0, 2, -1, -1]]
    assert np.isneginf(scores[0, 3:]).all()
    for scan, stored in ((native.scan_float32, codes), (native.scan_int8, np.eye(3, dtype=np.int8))):
        _, found = scan(np.array([[np.nan, 1.0, 0.0]], np.float32), stored, 2)
        assert found.tolist() == [[-1, -1]]


def test_heaps_fold_blocks_like_the_numpy_merge() -> None:
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 50, (5, 900)).astype(np.float32)  # many ties
    ids = rng.permutation(900) * 3
    heaps = native.TopKHeaps(5, 12)
    for start in range(0, 900, 128):
        heaps.push(scores[:, start:start + 128], ids[start:start + 128])
    got = heaps.result()
    np.testing.assert_array_equal(got[1], reference(scores, ids, 12)[1])
    np.testing.assert_array_equal(got[1], merge_top_k(scores, ids, 12)[1])


def test_bad_arguments_are_errors() -> None:
    codes = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="2-d"):
        native.scan_float32(np.zeros(8, np.float32), codes, 1)
    with pytest.raises(ValueError, match="columns"):
        native.scan_float32(np.zeros((1, 7), np.float32), codes, 1)
    with pytest.raises(ValueError, match="ids"):
        native.scan_float32(np.zeros((1, 8), np.float32), codes, 1, ids=np.arange(3))
    with pytest.raises(ValueError, match="k must"):
        native.scan_float32(np.zeros((1, 8), np.float32), codes, 0)
    with pytest.raises(ValueError, match="expected"):
        native.TopKHeaps(2, 3).push(np.zeros((3, 4), np.float32), np.arange(4))
    with pytest.raises(ValueError, match="unknown kernel level"):
        native.set_isa("sse9")
    with pytest.raises(ValueError, match="codes must be int8"):  # uint8 200 would be read as -56
        native.scan_int8(np.zeros((1, 8), np.float32), np.zeros((4, 8), np.uint8), 1)
    with pytest.raises(ValueError, match="ids must be"):  # one row of ids per block, not per query
        native.TopKHeaps(2, 3).push(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64))
    queries, out_scores, out_ids = np.zeros((1, 8), np.float32), np.zeros((1, 2), np.float32), np.zeros((1, 2))
    with pytest.raises(TypeError, match="bytes-like"):  # the module itself, without the wrapper's checks
        native._scan.scan(native._scan.KIND_F32, queries, None, None, None, 1, 4, 4, 8, 2, 1, out_scores, out_ids)
    with pytest.raises(ValueError, match="sizes"):
        native._scan.scan(native._scan.KIND_F32, queries, codes, None, None, 1, 4, 4, 8, 1 << 62, 1, out_scores,
                          out_ids)
    with pytest.raises(ValueError, match="sizes"):  # more rows than codes, without a row list
        native._scan.scan(native._scan.KIND_F32, queries, codes, None, None, 1, 5, 4, 8, 2, 1, out_scores, out_ids)
    with pytest.raises(ValueError, match=r"rows\[1\] = 4 is not a row of the 4 codes"):  # memory safety
        native.scan_float32(queries, codes, 2, rows=np.array([0, 4]))
    with pytest.raises(ValueError, match=r"rows\[0\] = -1"):
        native.scan_float32(queries, codes, 2, rows=np.array([-1]))
    with pytest.raises(ValueError, match="ids must be"):
        native.scan_float32(queries, codes, 2, rows=np.array([[0, 1]]))


@pytest.mark.parametrize("quantizer", ["fp32", "int8", "binary"])
@pytest.mark.parametrize("queries_count", [1, 30, 100])  # fused scans, and the batched paths past them
def test_exact_backend_gives_the_numpy_paths_results(quantizer: str, queries_count: int) -> None:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((3000, 96)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, 3000, queries_count)] + 0.3 * rng.standard_normal((queries_count, 96))
    index = ExactBackend(96, quantizer=quantizer)
    ids = np.arange(3000) * 5 + 2
    index.build(ids, vectors)
    for k, allowed in ((1, None), (10, None), (15, ids[1::3])):
        got = index.search(queries, k, allowed=allowed)
        with native.disabled():
            assert not native.available()
            want = index.search(queries, k, allowed=allowed)
        assert_same_top_k(got, want, atol=1e-5)
        if quantizer == "binary":  # integer distances: every tie is exact, so the ids must match
            np.testing.assert_array_equal(got[1], want[1])


def test_exact_top_k_agrees_with_and_without_the_kernels() -> None:
    rng = np.random.default_rng(12)
    vectors, queries = rng.standard_normal((700, 16)).astype(np.float32), rng.standard_normal((40, 16))
    got = exact_top_k(queries.astype(np.float32), vectors, np.arange(700), 9, block_rows=64)
    with native.disabled():
        want = exact_top_k(queries.astype(np.float32), vectors, np.arange(700), 9, block_rows=64)
    assert_same_top_k(got, want, atol=1e-5)


def test_the_environment_switch_turns_the_kernels_off() -> None:
    command = "from polymodal.index import native; print(native.available())"
    env = os.environ | {"POLYMODAL_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", command], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _scan_in_child(codes: np.ndarray, queries: np.ndarray) -> list:
    return native.scan_float32(queries, codes, 5)[1].tolist()


def test_scans_from_several_python_threads_and_a_forked_child(four_threads: None) -> None:
    """The helper threads serve one scan at a time: a second Python thread scanning at the
    same time starts threads of its own, and a forked child (which has none of the parent's
    threads) starts new helpers instead of waiting for the parent's."""
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    codes = rng.standard_normal((6000, 512)).astype(np.float32)  # 12 MB: several threads per scan
    queries = [rng.standard_normal((2, 512)).astype(np.float32) for _ in range(12)]
    want = [native.scan_float32(q, codes, 5)[1].tolist() for q in queries]  # starts the helpers
    with ThreadPoolExecutor(4) as threads:
        assert list(threads.map(lambda q: native.scan_float32(q, codes, 5)[1].tolist(), queries)) == want
    with multiprocessing.get_context("fork").Pool(1) as child:
        assert child.apply_async(_scan_in_child, (codes, queries[0])).get(timeout=60) == want[0]


@pytest.mark.parametrize("isa", ["auto", "avx2", "generic"])
@pytest.mark.parametrize("kind", ["F32", "I8", "HAMMING"])
@pytest.mark.parametrize("nq", [3, 20])  # one group of queries, and more than one
def test_a_row_list_scans_those_rows_in_place_like_a_copy_of_them(isa: str, kind: str, nq: int) -> None:
    """A filter reads the allowed rows where they are (no copy of the collection): the same
    results as scanning a copy of those rows, ids defaulting to the rows."""
    rng = np.random.default_rng(5)
    n, dim = 20_000, 40  # enough rows for several threads' chunks and blocks
    if kind == "HAMMING":
        codes = rng.integers(0, 2**63, (n, 2), dtype=np.uint64)
        queries = rng.integers(0, 2**63, (nq, 2), dtype=np.uint64)
        scan = native.scan_hamming
    else:
        codes = rng.standard_normal((n, dim)).astype(np.float32)
        if kind == "I8":
            codes = rng.integers(-127, 128, (n, dim), dtype=np.int8)
        queries = rng.standard_normal((nq, dim)).astype(np.float32)
        scan = native.scan_float32 if kind == "F32" else native.scan_int8
    rows = np.sort(rng.choice(n, 7_001, replace=False))[::-1].copy()  # any order
    native.set_isa(isa)
    try:
        scores, found = scan(queries, codes, 10, rows=rows)
        ref_scores, ref_found = scan(queries, codes[rows], 10, ids=rows)
        named_scores, named = scan(queries, codes, 10, ids=rows * 10 + 3, rows=rows)
    finally:
        native.set_isa("auto")
    np.testing.assert_array_equal(found, ref_found)
    np.testing.assert_array_equal(scores, ref_scores)
    assert set(found.ravel()) <= set(rows.tolist())
    np.testing.assert_array_equal(named, found * 10 + 3)  # ids[i] names codes[rows[i]]
    np.testing.assert_array_equal(named_scores, scores)
