"""The web page in headless Chromium (Debian's, driven by Playwright): type a query and
see results, upload an image and see similar ones, click a result, switch to captions;
the page makes no request outside its own server."""

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from polymodal.index.api import index
from polymodal.index.pipeline import IndexOptions
from polymodal.index.search import Searcher
from polymodal.serve.app import create_app
from polymodal.serve.service import SearchService
from tests.helpers import make_shapes_dataset, save_tiny_fusion_model, save_tiny_model

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
playwright = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # scripts/setup.sh installs it; without it there is nothing to drive
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("web")
    model = save_tiny_model(root / "model")
    captions = make_shapes_dataset(root / "shapes", per_class=3)
    index(str(captions.parent), model=str(model), options=IndexOptions(batch_size=16))
    return root / "shapes.pm"


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[tuple[str, Path]]:
    with serving(SearchService(store)) as url:
        yield url, store


@pytest.fixture(scope="module")
def explaining_server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    fusion = save_tiny_fusion_model(tmp_path_factory.mktemp("fusion") / "model", ["a red circle", "a blue square"])
    with serving(SearchService(store, reranker=fusion, rerank_top=20)) as url:
        yield url


@contextmanager
def serving(service: SearchService) -> Iterator[str]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def browsing(url: str) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(url + "/")
        yield page
        browser.close()


@pytest.fixture
def page(server: tuple[str, Path]) -> Iterator[Any]:
    with browsing(server[0]) as page:
        yield page


def test_typing_a_query_shows_the_searchers_results(page: Any, server: tuple[str, Path]) -> None:
    page.wait_for_selector("#store:has-text('36 images')")
    page.select_option("#k", "12")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#status:has-text('12 images')")
    shown = [int(x) for x in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")]
    with Searcher(server[1]) as searcher:
        assert shown == [h.id for h in searcher.search("a red circle", k=12)]
    # thumbnails load after the cards render: wait for one to decode (times out if none can)
    page.wait_for_function("() => [...document.querySelectorAll('.card img')]"
                           ".some(i => i.complete && i.naturalWidth > 0)", timeout=15000)
    origin = server[0]
    assert all(url.startswith((origin, "blob:", "data:")) for url in page.requests), page.requests


def test_uploading_an_image_then_clicking_a_result(page: Any, server: tuple[str, Path], tmp_path: Path) -> None:
    picture = tmp_path / "query.png"
    Image.new("RGB", (40, 40), (30, 60, 220)).save(picture)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#status:has-text('for query.png')")
    assert page.is_visible("#query-image img")
    with Searcher(server[1]) as searcher:
        expected = [h.id for h in searcher.search_vector(searcher.embed_image(picture), 24)]
    shown = [int(x) for x in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")]
    assert shown == expected
    page.click(".card >> nth=1")
    page.wait_for_selector("#status:has-text('items like')")
    similar = [int(x) for x in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")]
    assert expected[1] not in similar and len(similar) == 24


def test_captions_mode_and_keyboard(page: Any) -> None:
    page.keyboard.press("/")
    page.keyboard.type("a blue square")
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:has-text('images for')")
    page.check("input[value=text]")
    page.wait_for_selector("#status:has-text('captions for')")
    texts = page.eval_on_selector_all(".card .caption", "els => els.map(e => e.textContent)")
    assert texts and all(any(c in t for c in ("circle", "square", "triangle")) for t in texts)
    page.fill("#query", "")
    page.press("#query", "Enter")
    assert page.text_content("#status").startswith(str(len(texts)))  # an empty query changes nothing


def test_a_running_index_job_shows_its_progress_from_the_event_stream(page: Any, server: tuple[str, Path]) -> None:
    from polymodal.index.jobs import JobLog

    page.wait_for_selector("#store:has-text('36 images')")
    assert page.is_hidden("#job")
    job = JobLog(server[1], "photos/")  # another process's `polymodal index`, as its log shows it
    job.__enter__()
    job("embedding", 3, 10)
    page.wait_for_selector("#job-text:has-text('Indexing · embedding 3 / 10')", timeout=15_000)
    assert page.eval_on_selector("#job-progress", "p => p.value") == pytest.approx(0.3)
    job("embedding", 10, 10)
    job.summary = "10 embedded"
    job.__exit__(None, None, None)
    page.wait_for_selector("#job.done #job-text:has-text('Index updated: 10 embedded')", timeout=15_000)
    assert page.is_hidden("#job-progress")


def test_without_a_fusion_model_the_page_offers_no_rerank_or_why(page: Any) -> None:
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#status:has-text('images for')")
    assert page.is_hidden("#rerank-box") and page.query_selector(".why") is None


def test_a_fusion_model_reranks_and_shows_where_it_looks_for_each_word(explaining_server: str, store: Path) -> None:
    with browsing(explaining_server) as page:
        page.wait_for_selector("#rerank-box:not([hidden])")
        page.select_option("#k", "12")
        page.fill("#query", "a red circle")
        page.press("#query", "Enter")
        page.wait_for_selector("#status:has-text('(re-ranked)')")
        assert re.fullmatch(r"score -?\d\.\d{3} · P\(match\) \d\.\d{3}", page.text_content(".card .score") or "")
        shown = [int(x) for x in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")]
        with Searcher(store) as searcher:  # the re-ranked order itself: tests/integration/test_serve_rerank.py
            plain = [h.id for h in searcher.search("a red circle", k=20)]
        assert len(shown) == 12 and set(shown) <= set(plain)  # drawn from the top 20
        page.uncheck("#rerank")  # the same search again, plain
        page.wait_for_function("() => { const s = document.getElementById('status').textContent;"
                               " return s.includes('images for') && !s.includes('re-ranked'); }")
        assert [int(x) for x in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")] \
            == plain[:12]
        assert "P(match)" not in (page.text_content(".card .score") or "")
        page.click(".cell >> nth=0 >> .why")
        page.wait_for_selector("#explain-status:has-text('P(match)')")
        assert page.eval_on_selector("#explain", "d => d.open")
        labels = page.eval_on_selector_all("#explain-maps figcaption", "els => els.map(e => e.textContent)")
        assert labels == ["image", "a", "red", "circle"]
        # every panel is drawn: the image, then the image under a heatmap, so the panels differ
        drawn = page.eval_on_selector_all("#explain-maps canvas", "cs => cs.map(c => c.toDataURL())")
        assert len(set(drawn)) == 4
        page.click("#explain-close")
        assert not page.eval_on_selector("#explain", "d => d.open")
        assert all(url.startswith((explaining_server, "blob:", "data:")) for url in page.requests), page.requests
