"""A server with a fusion model (serve --reranker): text searches re-ranked on request,
the attention of each word over an image as JSON, and clear refusals without one."""

import math
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from polymodal.index.api import index
from polymodal.index.pipeline import IndexOptions
from polymodal.index.rerank import ITMReranker
from polymodal.index.search import Searcher
from polymodal.serve.app import create_app
from polymodal.serve.service import SearchService
from tests.helpers import make_shapes_dataset, save_tiny_fusion_model, save_tiny_model

TEXTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rerank")
    captions = make_shapes_dataset(root / "shapes", per_class=2)
    index(str(captions.parent), model=str(save_tiny_model(root / "model")), options=IndexOptions(batch_size=8))
    return root / "shapes.pm", save_tiny_fusion_model(root / "fusion", TEXTS)


def test_a_reranked_search_reorders_the_top_candidates_as_the_library_does(served: tuple[Path, Path]) -> None:
    store, fusion = served
    client = TestClient(create_app(SearchService(store, reranker=fusion, rerank_top=10)))
    reranker = ITMReranker(fusion)
    assert client.get("/api/health").json()["reranker"] == reranker.model_id != ""
    plain = client.get("/api/search", params={"q": "a red circle", "k": 10}).json()
    got = client.get("/api/search", params={"q": "a red circle", "k": 5, "rerank": "true"}).json()
    assert not plain["reranked"] and got["reranked"]
    with Searcher(store) as searcher:
        expected = searcher.search("a red circle", k=5, reranker=reranker, rerank_top=10)
    assert [h["id"] for h in got["hits"]] == [h.id for h in expected]
    assert {h["id"] for h in got["hits"]} <= {h["id"] for h in plain["hits"]}  # from the top 10 only
    assert [h["score"] for h in got["hits"]] == pytest.approx([h.score for h in expected], abs=1e-6)
    assert [h["match"] for h in got["hits"]] == pytest.approx([h.match for h in expected], abs=1e-6)
    assert all(h["match"] is None for h in plain["hits"])  # P(match) only where the fusion model scored
    # arithmetic and caption searches cannot be re-ranked: they run plain and say so
    for params in ({"q": "red + circle"}, {"q": "a red circle", "modality": "text"}):
        answer = client.get("/api/search", params={**params, "rerank": "true"})
        assert answer.status_code == 200 and not answer.json()["reranked"], answer.text


def test_explain_returns_each_words_attention_over_the_patches(served: tuple[Path, Path]) -> None:
    store, fusion = served
    client = TestClient(create_app(SearchService(store, reranker=fusion)))
    hit = client.get("/api/search", params={"q": "a red circle", "k": 1}).json()["hits"][0]
    found = client.get(f"/api/items/{hit['id']}/explain", params={"text": "a red circle"}).json()
    assert found["words"] == ["a", "red", "circle"] and found["grid"] == 4  # 16 px in 4 px patches
    assert len(found["maps"]) == 3 and all(len(m) == 16 for m in found["maps"])
    assert all(math.isclose(sum(m), 1.0, abs_tol=1e-3) and min(m) >= 0 for m in found["maps"])
    with Searcher(store) as searcher:
        (item,) = searcher.store.items([hit["id"]])
    from polymodal.index.reader import image_ref

    expected = ITMReranker(fusion).match("a red circle", [image_ref(item).read_bytes()])[0]
    assert found["match"] == pytest.approx(float(expected), abs=1e-5)
    caption = client.get("/api/search", params={"q": "a red circle", "k": 1, "modality": "text"}).json()["hits"][0]
    assert client.get(f"/api/items/{caption['id']}/explain", params={"text": "a"}).status_code == 404
    assert client.get(f"/api/items/{hit['id']}/explain", params={"text": ""}).status_code == 422


def test_without_a_fusion_model_explain_and_rerank_are_refused(served: tuple[Path, Path]) -> None:
    client = TestClient(create_app(SearchService(served[0])), raise_server_exceptions=False)
    assert client.get("/api/health").json()["reranker"] is None
    hit = client.get("/api/search", params={"q": "a red circle", "k": 1}).json()["hits"][0]
    refused = client.get(f"/api/items/{hit['id']}/explain", params={"text": "a red circle"})
    assert refused.status_code == 404 and "--reranker" in refused.json()["error"]
    search = client.get("/api/search", params={"q": "a red circle", "rerank": "true"})
    assert search.status_code == 404 and "--reranker" in search.json()["error"]


def test_a_missing_fusion_model_fails_at_start(served: tuple[Path, Path], tmp_path: Path) -> None:
    from polymodal.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a model directory"):
        SearchService(served[0], reranker=tmp_path / "nowhere")
