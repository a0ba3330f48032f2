"""The web page in headless Chromium (Debian's, driven by Playwright): type a query and
see results, upload an image and see similar ones, click a result, switch to captions;
the page makes no request outside its own server."""

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from polymodal.index.api import index
from polymodal.index.pipeline import IndexOptions
from polymodal.index.search import Searcher
from polymodal.serve.app import create_app
from polymodal.serve.service import SearchService
from tests.helpers import make_shapes_dataset, save_tiny_model

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
playwright = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # scripts/setup.sh installs it; without it there is nothing to drive
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    import uvicorn

    root = tmp_path_factory.mktemp("web")
    model = save_tiny_model(root / "model")
    captions = make_shapes_dataset(root / "shapes", per_class=3)
    index(str(captions.parent), model=str(model), options=IndexOptions(batch_size=16))
    store = root / "shapes.pm"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(SearchService(store)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(server: tuple[str, Path]) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(server[0] + "/")
        yield page
        browser.close()


def test_typing_a_query_shows_the_searchers_results(page: Any, server: tuple[str, Path]) -> None:
    page.wait_for_selector("#store:has-text('36 images')")
    page.select_option("#k", "12")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#status:has-text('12 images')")
    shown = [int(x) for x in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")]
    with Searcher(server[1]) as searcher:
        assert shown == [h.id for h in searcher.search("a red circle", k=12)]
    assert page.eval_on_selector_all(".card img", "imgs => imgs.filter(i => i.naturalWidth > 0).length") > 0
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
