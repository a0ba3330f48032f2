"""Every backend and quantiser against exact fp32 search, on clustered vectors shaped like
embeddings (queries near, not on, the stored points), with stated recall floors; saving
and loading; filters; the memory-budget choice."""

from pathlib import Path

import numpy as np
import pytest

from polymodal.errors import StoreError
from polymodal.index.auto import choose_index
from polymodal.index.backends import BACKENDS, ExactBackend, make_backend
from polymodal.index.evaluate import _flag_pareto
from polymodal.index.quantizers import QUANTIZERS, make_quantizer, training_sample
from polymodal.index.topk import exact_top_k

DIM = 32


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = np.random.default_rng(0).normal(size=(20, DIM))
    return np.arange(1000, 3000, dtype=np.int64), clustered(2000, 1, centres), clustered(50, 2, centres)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


# backend, params, recall@10 floor against exact fp32. Measured on this data: 1.0, 1.0, 0.95,
# 0.32, 0.22, 1.0, 0.96, 0.47, 0.39, 0.22, 1.0 (a random top 10 would get 0.005). At 32
# dimensions sign bits and 4-d PQ sub-vectors are coarse; re-ranking recovers (test_search).
CASES = [
    ("exact", {"quantizer": "fp32"}, 1.0),
    ("exact", {"quantizer": "fp16"}, 0.99),
    ("exact", {"quantizer": "int8"}, 0.9),
    ("exact", {"quantizer": "pq", "m": 8}, 0.25),
    ("exact", {"quantizer": "binary"}, 0.15),
    ("hnsw", {"m": 16, "ef_search": 64}, 0.95),
    ("hnsw", {"quantizer": "int8"}, 0.85),
    ("ivfpq", {"nlist": 16, "m": 8, "nprobe": 16}, 0.35),
    ("lsh", {"nbits": 128}, 0.3),
    ("binary", {}, 0.15),
    ("kdtree", {}, 1.0),
]


@pytest.mark.parametrize(("name", "params", "floor"), CASES)
def test_backend_agrees_with_exact_search(name: str, params: dict, floor: float, data: tuple, tmp_path: Path) -> None:
    ids, vectors, queries = data
    _, truth = exact_top_k(queries, vectors, ids, 10)
    backend = make_backend(name, DIM, **params)
    backend.build(ids, vectors, training_sample([vectors, queries]))
    scores, found = backend.search(queries, 10)
    assert found.shape == (50, 10) and set(found.ravel()) <= set(ids)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    recall = recall_at_10(found, truth)
    assert recall >= floor, (name, params, recall)
    backend.save(tmp_path)
    loaded = make_backend(name, DIM, **params)
    loaded.load(tmp_path)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], found)
    assert 0 < backend.nbytes


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_filters_return_only_allowed_ids(name: str, data: tuple) -> None:
    ids, vectors, queries = data
    params = {"nlist": 8, "m": 8} if name == "ivfpq" else {}
    backend = make_backend(name, DIM, **params)
    backend.build(ids, vectors, vectors)
    allowed = ids[::7]
    _, found = backend.search(queries[:5], 10, allowed=allowed)
    assert set(found.ravel()) - {-1} <= set(allowed)
    assert (found >= 0).sum() >= 5 * 8  # a filter leaves enough results, not an empty page
    _, none = backend.search(queries[:2], 3, allowed=np.array([5], dtype=np.int64))
    assert (none == -1).all()


def test_fewer_items_than_k_are_padded(data: tuple) -> None:
    ids, vectors, queries = data
    backend = make_backend("hnsw", DIM)
    backend.build(ids[:3], vectors[:3])
    scores, found = backend.search(queries[:1], 5)
    assert sorted(found[0][:3]) == ids[:3].tolist() and found[0][3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0][3:]).all()


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_quantisers_round_trip_and_size(name: str, data: tuple) -> None:
    _, vectors, _ = data
    quantizer = make_quantizer(name, DIM, **({"m": 8} if name == "pq" else {}))
    quantizer.train(vectors)
    codes = quantizer.encode(vectors[:100])
    assert codes.nbytes == pytest.approx(100 * quantizer.bytes_per_vector)
    decoded = quantizer.decode(codes)
    cosine = np.sum(decoded * vectors[:100], axis=1) / np.linalg.norm(decoded, axis=1)
    assert cosine.mean() > {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "pq": 0.8, "binary": 0.7}[name]
    direct = quantizer.scores(vectors[:3], codes)
    np.testing.assert_allclose(direct[:, :10], (vectors[:3] @ decoded.T)[:, :10] if name != "binary"
                               else direct[:, :10], atol=1e-4)


def test_int8_scale_ignores_one_outlier() -> None:
    x = np.random.default_rng(0).normal(size=(5000, 4)).astype(np.float32)
    x[0, 0] = 1000.0
    quantizer = make_quantizer("int8", 4)
    quantizer.train(x)
    assert quantizer.scale[0] < 10  # type: ignore[attr-defined]


def test_training_sample_balances_modalities() -> None:
    images, texts = np.zeros((10_000, 4), np.float32), np.ones((500, 4), np.float32)
    sample = training_sample([images, texts], size=2000)
    assert (sample[:, 0] == 1).sum() == 500 and (sample[:, 0] == 0).sum() == 1000


def test_bad_backend_requests_are_clear(data: tuple) -> None:
    ids, vectors, _ = data
    for call, message in ((lambda: make_backend("annoy", DIM), "unknown index backend"),
                          (lambda: make_backend("hnsw", DIM, quantizer="pq"), "fp32, fp16 or int8"),
                          (lambda: make_backend("hnsw", DIM, bogus=1), "bad parameters"),
                          (lambda: make_quantizer("int4", DIM), "unknown quantizer"),
                          (lambda: make_quantizer("pq", DIM, m=5), "divide")):
        with pytest.raises(StoreError, match=message):
            call()
    small = make_backend("ivfpq", DIM, m=8)
    with pytest.raises(StoreError, match="to train on"):
        small.build(ids[:50], vectors[:50])
    with pytest.raises(StoreError, match="32-d"):
        ExactBackend(DIM).search(np.ones(3, np.float32), 1)


@pytest.mark.parametrize(("n", "dim", "budget", "backend"), [
    (5_000, 512, 2 ** 30, "exact"),            # small: exact fp32 is fast enough and fits
    (250_000, 512, 2 ** 30, "hnsw"),           # 512 MB of codes: a graph answers faster
    (500_000, 512, 4 * 2 ** 30, "hnsw"),       # roomy: an fp16 graph (as exact as fp32 at ef 192, faster)
    (2_000_000, 512, 2 * 2 ** 30, "hnsw"),     # int8 graph fits, float32 does not
    (20_000_000, 512, 2 * 2 ** 30, "ivfpq"),   # only compressed codes fit
])
def test_memory_budget_choice(n: int, dim: int, budget: int, backend: str) -> None:
    choice = choose_index(n, dim, budget)
    assert choice.backend == backend
    assert choice.estimated_bytes <= budget and choice.reason
    if n == 2_000_000:
        assert choice.params["quantizer"] == "int8"
    if n == 500_000:
        assert choice.params["quantizer"] == "fp16"


def test_exact_search_is_chosen_as_far_as_the_scan_is_fast() -> None:
    from polymodal.index import native

    if native.available():  # the compiled scan: 256 MB of codes in ~7 ms
        assert choose_index(250_000, 256, 2 ** 30).backend == "exact"
    with native.disabled():  # numpy: 100 MB
        assert choose_index(250_000, 256, 2 ** 30).backend == "hnsw"
        assert choose_index(50_000, 512, 2 ** 30).backend == "exact"


def test_a_budget_too_small_for_anything_is_an_error() -> None:
    with pytest.raises(StoreError, match="budget"):
        choose_index(10_000_000, 512, 10 * 2 ** 20)


def test_pareto_flags() -> None:
    rows = [{"config": "a", "recall@10": 1.0, "qps": 100, "bytes/vector": 400},
            {"config": "b", "recall@10": 0.9, "qps": 1000, "bytes/vector": 100},
            {"config": "c", "recall@10": 0.8, "qps": 900, "bytes/vector": 100},  # b beats it on all three
            {"config": "d", "recall@10": 0.5, "qps": 50, "bytes/vector": 4},  # smallest: on the front
            {"config": "e", "error": "could not train"}]
    _flag_pareto(rows)
    assert [r.get("pareto") for r in rows] == [True, True, False, True, None]


def test_ivf_centroids_follow_the_indexed_modality_across_a_modality_gap() -> None:
    """Text vectors sit apart from image vectors (the CLIP modality gap). An IVF index of
    images whose centroids were trained on a mix has lists near the texts that hold no
    images; text queries probing them miss. Training on the images avoids that."""
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, DIM))
    gap = 3.0 * rng.normal(size=DIM)
    images = centres[rng.integers(0, 40, 4000)] + 0.5 * rng.normal(size=(4000, DIM))
    texts = images[:2000] + gap + 0.5 * rng.normal(size=(2000, DIM))
    images, texts = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (images, texts))
    images, texts = images.astype(np.float32), texts.astype(np.float32)
    ids = np.arange(4000)
    queries = texts[:200]
    _, truth = exact_top_k(queries, images, ids, 10)
    ours = make_backend("ivfpq", DIM, nlist=64, m=8, nprobe=4)
    ours.build(ids, images, training_sample([images, texts]))
    mixed = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, 64, 8, 8, faiss.METRIC_INNER_PRODUCT)
    mixed.train(training_sample([images, texts]))
    mixed.add(images)
    mixed.nprobe = 4
    ours_recall = recall_at_10(ours.search(queries, 10)[1], truth)
    mixed_recall = recall_at_10(mixed.search(queries, 10)[1], truth)
    assert ours_recall > mixed_recall + 0.1, (ours_recall, mixed_recall)


@pytest.mark.parametrize("vnni", [True, False])
def test_the_int8_two_pass_search_returns_what_scoring_every_code_returns(vnni: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from polymodal.index import quantizers

    monkeypatch.setattr(quantizers, "INT8_FUSED_MAX_QUERIES", 0)  # the two-pass search, not the fused scan
    if not vnni:  # a torch without the int8 kernel takes the numpy fallback
        monkeypatch.setattr(torch, "_int_mm", lambda *a: (_ for _ in ()).throw(RuntimeError("no kernel")))
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 48)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, 3000, 40)] + 0.4 * rng.standard_normal((40, 48)).astype(np.float32)
    index = ExactBackend(48, quantizer="int8")
    ids = np.arange(3000) * 7 + 5  # ids other than positions
    index.build(ids, vectors)
    for k, allowed in ((1, None), (10, None), (25, ids[::2])):
        positions = np.arange(3000) if allowed is None else (allowed - 5) // 7
        ref_scores, ref_found = exact_top_k(queries, index.codes[positions], positions, k, index.quantizer.scores)
        scores, found = index.search(queries, k, allowed=allowed)
        np.testing.assert_array_equal(found, ids[ref_found])
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
    approximate = index.quantizer.approximate_scores(queries, index.codes)
    exact = index.quantizer.scores(queries, index.codes)
    assert np.abs(approximate - exact).max() < 0.02  # the int8 query moves scores by little


@pytest.mark.parametrize("dim", [48, 50, 512])
@pytest.mark.parametrize("block", [64, 16384])  # 200 codes: three whole blocks and a partial one, or one
def test_binary_scores_are_one_minus_twice_the_hamming_share(dim: int, block: int, monkeypatch) -> None:
    from polymodal.index import quantizers

    monkeypatch.setattr(quantizers, "BINARY_BLOCK", block)
    rng = np.random.default_rng(dim)
    vectors, queries = rng.standard_normal((200, dim)), rng.standard_normal((3, dim))
    quantizer = make_quantizer("binary", dim)
    hamming = ((queries[:, None, :] > 0) != (vectors[None, :, :] > 0)).sum(axis=2)
    np.testing.assert_allclose(quantizer.scores(queries, quantizer.encode(vectors)), 1 - 2 * hamming / dim,
                               rtol=1e-6)


@pytest.mark.parametrize("dim", [50, 100, 128])  # 7 and 13 bytes per code need padding to whole words; 16 does not
def test_binary_codes_are_laid_out_for_the_scan_once_and_search_like_numpy(dim: int, tmp_path: Path) -> None:
    from polymodal.index import native

    rng = np.random.default_rng(dim)
    ids = np.arange(300, dtype=np.int64) * 3 + 1
    vectors, queries = rng.standard_normal((300, dim)).astype(np.float32), rng.standard_normal((4, dim))
    backend = make_backend("exact", dim, quantizer="binary")
    backend.build(ids, vectors)
    assert isinstance(backend, ExactBackend)
    assert backend.scan_codes.dtype == np.uint64 and backend.scan_codes.shape == (300, -(-dim // 64))
    assert backend.codes.dtype == np.uint8  # what is saved stays the packed bits
    if dim % 64 == 0:
        assert np.shares_memory(backend.scan_codes, backend.codes)  # a view, no copy
    hamming = ((queries[:, None, :] > 0) != (vectors[None, :, :] > 0)).sum(axis=2)
    for allowed in (None, ids[::3]):
        scores, found = backend.search(queries.astype(np.float32), 5, allowed=allowed)
        with native.disabled():
            ref_scores, ref_found = backend.search(queries.astype(np.float32), 5, allowed=allowed)
        np.testing.assert_array_equal(found, ref_found)
        np.testing.assert_array_equal(scores, ref_scores)
        columns = np.searchsorted(ids, found)
        np.testing.assert_allclose(scores, 1 - 2 * np.take_along_axis(hamming, columns, 1) / dim, rtol=1e-6)
    backend.save(tmp_path)
    loaded = make_backend("exact", dim, quantizer="binary")
    loaded.load(tmp_path)
    assert isinstance(loaded, ExactBackend)
    np.testing.assert_array_equal(loaded.scan_codes, backend.scan_codes)


@pytest.mark.parametrize("ids", [
    np.arange(100, 300),  # dense: the position table
    np.arange(0, 2000, 7),  # sparse: the binary search
    np.array([5, 9, 9, 12, 40]),  # an id at two positions
    np.array([-2**62 - 1, 0, 2**62 + 1]),  # a span beyond int64
    np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max]),
], ids=["dense", "sparse", "repeated", "wide", "extremes"])
def test_positions_of_allowed_ids_are_what_isin_finds(ids: np.ndarray, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    backend = ExactBackend(4)
    backend.build(rng.permutation(ids), rng.standard_normal((len(ids), 4)).astype(np.float32))
    lo, hi = int(ids.min()), int(ids.max())
    for wanted in (rng.integers(max(lo, -2**62) - 50, min(hi, 2**62) + 50, 80),  # unknown ids, outside too
                   np.sort(rng.choice(ids, len(ids) // 3, replace=False)),  # sorted, all known
                   np.concatenate([ids[::-1], ids[:3]]),  # unsorted, repeated
                   np.array([lo - 1, hi + 1]), np.array([], dtype=np.int64),
                   ids.astype(np.float64) + 0.5, np.array([2**64 - 1], dtype=np.uint64)):  # compared by value
        expected = np.flatnonzero(np.isin(backend.ids, wanted))
        np.testing.assert_array_equal(backend.positions(wanted), expected)
    backend.save(tmp_path / "b")
    loaded = ExactBackend(4)
    loaded.load(tmp_path / "b")
    np.testing.assert_array_equal(loaded.positions(ids[:5]), np.flatnonzero(np.isin(loaded.ids, ids[:5])))


def test_positions_follow_a_rebuild() -> None:
    backend = ExactBackend(2)
    backend.build(np.arange(10), np.ones((10, 2), np.float32))
    assert backend.positions(np.array([3, 4])).tolist() == [3, 4]
    backend.build(np.arange(100, 110), np.ones((10, 2), np.float32))  # the old table must not answer
    assert backend.positions(np.array([3, 4])).tolist() == []
    assert backend.positions(np.array([104, 103])).tolist() == [3, 4]
