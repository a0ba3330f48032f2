"""Exact top-k (the reference every backend is measured against), query arithmetic and
filters, on stores filled with known vectors (no model needed)."""

from pathlib import Path

import numpy as np
import pytest

from polymodal.errors import DataError, StoreError
from polymodal.index.backends import ExactBackend
from polymodal.index.build import build_index, load_index
from polymodal.index.query import Term, parse_query
from polymodal.index.search import Filter, Searcher, parse_filters
from polymodal.index.store import NewItem, Store
from polymodal.index.topk import exact_top_k, merge_top_k
from tests.unit.test_store import unit_vectors


def test_exact_top_k_matches_a_full_sort_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("polymodal.index.topk.BLOCK_ROWS", 7)  # force several blocks
    vectors, queries = unit_vectors(50, seed=1), unit_vectors(4, seed=2)
    ids = np.arange(100, 150)
    scores, found = exact_top_k(queries, vectors, ids, 5)
    full = queries @ vectors.T
    expected = np.argsort(-full, axis=1)[:, :5]
    np.testing.assert_array_equal(found, ids[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)


def test_ties_go_to_the_smaller_id_and_missing_results_are_padded() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    ids = np.array([[7, 3, 2, 9, 1]])
    top_scores, top_ids = merge_top_k(scores, ids, 3)
    assert top_ids.tolist() == [[3, 2, 7]]
    _, padded = exact_top_k(np.ones((1, 2), np.float32), np.eye(2, dtype=np.float32), np.array([5, 6]), 4)
    assert padded.tolist() == [[5, 6, -1, -1]]


def test_allowed_ids_restrict_exact_search() -> None:
    backend = ExactBackend(8)
    vectors = unit_vectors(20)
    backend.build(np.arange(20), vectors)
    _, found = backend.search(vectors[3], 5, allowed=np.array([1, 2, 3]))
    assert set(found[0][found[0] >= 0]) == {1, 2, 3} and found[0][0] == 3
    with pytest.raises(StoreError, match="8-d"):
        backend.search(np.ones(5, np.float32), 1)


def test_query_arithmetic_parses_weights_signs_and_image_terms(tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(b"")
    assert parse_query("beach + 2:dog - people") == [Term(1.0, "beach"), Term(2.0, "dog"), Term(-1.0, "people")]
    assert parse_query("a black-and-white t-shirt") == [Term(1.0, "a black-and-white t-shirt")]
    assert parse_query(f"{picture} + 0.5:snow") == [Term(1.0, image=str(picture)), Term(0.5, "snow")]
    for bad, message in (("dog + ", "no term"), ("0:dog", "non-zero"), ("missing.jpg", "not a file")):
        with pytest.raises(DataError, match=message):
            parse_query(bad)


def _filled_store(path: Path) -> tuple[Store, np.ndarray]:
    store = Store.create(path, model_id="m1", dim=8)
    vectors = unit_vectors(30, seed=3)
    items = [NewItem(f"/data/{'red' if i % 3 == 0 else 'blue'}/{i}.png", "image", f"h{i}",
                     metadata={"colour": "red" if i % 3 == 0 else "blue", "n": i}) for i in range(30)]
    store.add(items, vectors)
    return store, vectors


@pytest.mark.parametrize("push_down", [0.0, 1.1])  # over-fetch and filter, or search only the allowed
def test_filters_return_only_matching_items_in_exact_order(tmp_path: Path, push_down: float,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("polymodal.index.search.PUSH_DOWN_BELOW", push_down)
    store, vectors = _filled_store(tmp_path / "s.pm")
    build_index(store)
    searcher = Searcher(store.path)
    query = vectors[4]
    hits = searcher.search_vector(query, 4, where=Filter((("colour", "red"),)))
    red = [i for i in range(30) if i % 3 == 0]
    expected = sorted(red, key=lambda i: -float(vectors[i] @ query))[:4]
    assert [h.metadata["n"] for h in hits] == expected
    assert all(h.metadata["colour"] == "red" for h in hits)
    assert [h.metadata["n"] for h in searcher.search_vector(query, 3, where=Filter(uri_glob="*/blue/1*"))] == \
        sorted([i for i in range(10, 20) if i % 3], key=lambda i: -float(vectors[i] @ query))[:3]
    assert searcher.search_vector(query, 3, where=Filter((("colour", "green"),))) == []


def test_more_like_leaves_out_the_given_items(tmp_path: Path) -> None:
    store, vectors = _filled_store(tmp_path / "s.pm")
    searcher = Searcher(store.path)
    hits = searcher.more_like([1, 2], k=3)
    mean = vectors[[0, 1]].mean(axis=0)
    expected = [i + 1 for i in sorted(range(2, 30), key=lambda i: -float(vectors[i] @ mean))[:3]]
    assert [h.id for h in hits] == expected
    with pytest.raises(DataError, match="at least one"):
        searcher.more_like([])


def test_a_stale_index_is_not_used(tmp_path: Path) -> None:
    store, vectors = _filled_store(tmp_path / "s.pm")
    build_index(store)
    assert load_index(store, "image") is not None
    store.remove([1])  # changed after the build, as after a crash before the rebuild
    assert load_index(store, "image") is None
    hits = Searcher(store.path).search_vector(vectors[0], 1)
    assert hits[0].id != 1  # exact search over the live items instead


def test_filter_syntax_errors() -> None:
    assert parse_filters(["colour=red", "a=b=c"]) == (("colour", "red"), ("a", "b=c"))
    for bad in ("colour", "=red", "col our=red"):
        with pytest.raises(DataError):
            parse_filters([bad])


def test_reranking_with_stored_vectors_recovers_the_exact_order(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s.pm", model_id="m1", dim=32)
    vectors = unit_vectors(400, dim=32, seed=5)
    ids = store.add([NewItem(f"/{i}.png", "image", f"h{i}") for i in range(400)], vectors)
    queries = unit_vectors(20, dim=32, seed=6)
    recall = {}
    for rerank in (0, 10):
        build_index(store, "exact", {"quantizer": "binary"}, rerank=rerank)
        searcher = Searcher(store.path)
        found = [{h.id for h in searcher.search_vector(q, 10)} for q in queries]
        truth = [{ids[i] for i in np.argsort(-(vectors @ q))[:10]} for q in queries]
        recall[rerank] = np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)])
    # 32 sign bits rank 400 random vectors coarsely; re-scoring the top 100 in float32 fixes most
    assert recall[0] < 0.5 and recall[10] > 0.8, recall


def test_top_k_with_many_ties_matches_a_full_sort() -> None:
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(6, 300)).astype(np.float32)  # Hamming-like: ties everywhere
    ids = rng.permutation(1000)[:300]
    for k in (1, 5, 40):
        got_scores, got_ids = exact_top_k(np.eye(6, dtype=np.float32), scores.T.copy(), ids, k)
        for row in range(6):
            order = np.lexsort((ids, -scores[row]))[:k]
            assert got_ids[row].tolist() == ids[order].tolist()
            np.testing.assert_array_equal(got_scores[row], scores[row, order])
