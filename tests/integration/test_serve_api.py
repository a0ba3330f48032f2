"""The HTTP API with FastAPI's test client, on a store indexed from generated images with
a tiny model: results equal the library's, and every refusal (unknown items, files
outside the indexed folders, symlink escapes, oversized or non-image uploads) is a
JSON error without a stack trace."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.index.api import index, remove_items
from polymodal.index.pipeline import IndexOptions
from polymodal.index.search import Searcher
from polymodal.index.store import NewItem, Store
from polymodal.serve.app import create_app
from polymodal.serve.service import Limits, SearchService
from tests.helpers import make_shapes_dataset, save_tiny_model


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    model = save_tiny_model(root / "model")
    captions = make_shapes_dataset(root / "shapes", per_class=2)
    outside = root / "outside.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(outside)
    os.symlink(outside, captions.parent / "images" / "link.png")  # a symlink out of the indexed folder
    report = index(str(captions.parent), model=str(model), options=IndexOptions(batch_size=8)).reports[0]
    assert list(report.dropped.values()) == ["a symbolic link out of the indexed folder; not indexed"]
    return root / "shapes.pm"


@pytest.fixture(scope="module")
def client(store: Path) -> TestClient:
    service = SearchService(store, limits=Limits(max_upload_bytes=200_000, max_pixels=1_000_000))
    return TestClient(create_app(service), raise_server_exceptions=False)


def png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_health_counts_the_store(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["images"] == 24 and body["texts"] == 48 and body["index"] == "exact"


def test_text_search_equals_the_library(client: TestClient, store: Path) -> None:
    response = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert response.status_code == 200
    body = response.json()
    with Searcher(store) as searcher:
        expected = searcher.search("a red circle", k=5)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert all(h["thumbnail"] == f"/api/items/{h['id']}/thumbnail" for h in body["hits"])
    assert all("source" not in h["metadata"] and "/" not in h["name"] for h in body["hits"])
    captions = client.get("/api/search", params={"q": "a red circle", "modality": "text", "k": 3}).json()["hits"]
    assert all(c["modality"] == "text" and c["image_id"] and c["name"] == c["text"] for c in captions)


def test_image_upload_and_similar_items(client: TestClient, store: Path) -> None:
    data = png((220, 30, 30))
    response = client.post("/api/search/image", files={"file": ("q.png", data, "image/png")}, data={"k": "4"})
    assert response.status_code == 200, response.text
    with Searcher(store) as searcher:
        vector = searcher.embed_image(Image.open(io.BytesIO(data)))
        expected = [h.id for h in searcher.search_vector(vector, 4)]
    assert [h["id"] for h in response.json()["hits"]] == expected
    first = expected[0]
    similar = client.get(f"/api/items/{first}/similar", params={"k": 3}).json()["hits"]
    assert len(similar) == 3 and first not in [h["id"] for h in similar]


def test_items_thumbnails_and_originals(client: TestClient, store: Path) -> None:
    with Store(store) as opened:
        item = next(i for i in opened.live_items("image") if i.uri.endswith("red-circle-0.png"))
    body = client.get(f"/api/items/{item.id}").json()
    assert body["name"] == "red-circle-0.png" and body["original"] == f"/api/items/{item.id}/original"
    original = client.get(f"/api/items/{item.id}/original")
    assert original.content == Path(item.uri).read_bytes() and original.headers["content-type"] == "image/png"
    thumbnail = client.get(f"/api/items/{item.id}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 256


def test_only_live_indexed_items_inside_the_roots_are_served(client: TestClient, store: Path,
                                                             tmp_path: Path) -> None:
    assert client.get("/api/items/99999").status_code == 404
    with Store(store) as opened:
        caption = next(opened.live_items("text"))
    assert client.get(f"/api/items/{caption.id}/original").status_code == 404  # captions have no file
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((0, 0, 0)))
    with Store(store, writable=True) as opened:  # an item pointing anywhere (e.g. a hand-edited store)
        (planted,) = opened.add([NewItem(str(secret), "image", "planted")], np.ones((1, 24), np.float32) / 24**0.5)
    response = client.get(f"/api/items/{planted}/original")
    assert response.status_code == 404 and "outside the indexed folders" in response.json()["error"]
    assert client.get(f"/api/items/{planted}/thumbnail").status_code == 404
    for path in ("/api/items/..%2F..%2Fetc%2Fpasswd/original", "/api/items/-1/original", "/api/items/1.5"):
        assert client.get(path).status_code in (404, 422)
    remove_items(store, [planted])
    assert client.get(f"/api/items/{planted}").status_code == 404


def test_uploads_are_limited_and_checked(client: TestClient) -> None:
    big = png((5, 5, 5), size=1200)  # 1.44 M pixels > 1 M
    response = client.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    heavy = os.urandom(300_000)
    assert client.post("/api/search/image", files={"file": ("x.png", heavy, "image/png")}).status_code == 413
    text = client.post("/api/search/image", files={"file": ("x.png", b"not an image", "image/png")})
    assert text.status_code == 400 and "not a readable image" in text.json()["error"]
    wrong = client.post("/api/search/image", files={"file": ("x.txt", png((1, 1, 1)), "text/plain")})
    assert wrong.status_code == 400 and "content type" in wrong.json()["error"]


def test_bad_requests_are_json_errors(client: TestClient, store: Path) -> None:
    for params, status in (({"q": ""}, 422), ({"q": "dog", "k": 0}, 422), ({"q": "dog", "modality": "audio"}, 422),
                           ({"q": "/etc/passwd.png + dog"}, 400), ({"q": "dog", "where": "bad key=1"}, 400)):
        response = client.get("/api/search", params=params)
        assert response.status_code == status, (params, response.text)
        assert set(response.json()) == {"error"} and "Traceback" not in response.text


def test_an_internal_error_hides_its_details(store: Path) -> None:
    service = SearchService(store)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail /home/user/.ssh")

    service.search_text = broken  # type: ignore[method-assign]
    response = TestClient(create_app(service), raise_server_exceptions=False).get("/api/search", params={"q": "x"})
    assert response.status_code == 500 and response.json() == {"error": "internal error"}


def test_zero_shot_classification_of_an_upload(client: TestClient) -> None:
    response = client.post("/api/classify", files={"file": ("q.png", png((200, 20, 20)), "image/png")},
                           data={"labels": "red circle, blue square,green triangle"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [x["label"] for x in body["labels"]][0] == body["best"]
    assert sum(x["probability"] for x in body["labels"]) == pytest.approx(1.0, abs=1e-4)
    assert {x["label"] for x in body["labels"]} == {"red circle", "blue square", "green triangle"}
    one = client.post("/api/classify", files={"file": ("q.png", png((1, 1, 1)), "image/png")}, data={"labels": "x"})
    assert one.status_code == 400 and "between 2" in one.json()["error"]


def test_openapi_describes_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/items/{item_id}", "/api/items/{item_id}/thumbnail",
            "/api/items/{item_id}/original", "/api/items/{item_id}/similar", "/api/classify",
            "/api/health"} <= set(spec["paths"])


def test_polymodal_serve_answers_on_localhost(store: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "polymodal.cli", "serve", str(store), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.3)
        assert body is not None and body["images"] >= 24
        hits = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": "a blue square", "k": 2}).json()
        assert len(hits["hits"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_adding_and_removing_items_needs_the_api_key(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "store.pm"
    shutil.copytree(store, copy)
    (copy / ".lock").unlink(missing_ok=True)
    service = SearchService(copy)
    client = TestClient(create_app(service, api_key="s3cret"), raise_server_exceptions=False)
    upload = {"file": ("new.png", png((10, 200, 10)), "image/png")}
    assert client.post("/api/items", files=upload).status_code == 403
    assert client.post("/api/items", files=upload, headers={"X-API-Key": "wrong"}).status_code == 403
    added = client.post("/api/items", files=upload, headers={"X-API-Key": "s3cret"})
    assert added.status_code == 200, added.text
    item = added.json()
    assert client.get("/api/health").json()["images"] == 25
    found = client.post("/api/search/image", files=upload, data={"k": "1"}).json()["hits"]
    assert found[0]["id"] == item["id"] and found[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert client.get(item["original"]).content == png((10, 200, 10))  # uploads are served like indexed files
    assert client.delete(f"/api/items/{item['id']}").status_code == 403
    assert client.delete(f"/api/items/{item['id']}", headers={"X-API-Key": "s3cret"}).json() == {"removed": 1}
    assert client.get(f"/api/items/{item['id']}").status_code == 404
    assert not list((copy / "uploads").glob("*.png"))
    assert client.get("/api/health").json()["images"] == 24


def test_metrics_count_requests_by_route(client: TestClient) -> None:
    client.get("/api/search", params={"q": "a red circle"})
    client.get("/api/items/99999")
    text = client.get("/metrics").text
    assert 'polymodal_requests_total{route="/api/search",method="GET",status="200"}' in text
    assert 'polymodal_requests_total{route="/api/items/{item_id}",method="GET",status="404"}' in text
    assert 'polymodal_items{modality="image"} 24' in text
    assert 'polymodal_request_seconds_bucket{route="/api/search",le="+Inf"}' in text
