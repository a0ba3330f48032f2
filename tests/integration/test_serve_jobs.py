"""Index jobs over HTTP: start one, stream its progress events (the lines the CLI bar
draws), see jobs another process runs, and serve what they indexed."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from polymodal.index import jobs
from polymodal.index.api import index
from polymodal.index.jobs import ProgressEvent, read_events
from polymodal.index.pipeline import IndexOptions
from polymodal.serve.app import create_app
from polymodal.serve.service import SearchService
from tests.helpers import save_tiny_model

OPTIONS = IndexOptions(batch_size=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model")


def add_photos(folder: Path, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / name)


@pytest.fixture()
def served(tmp_path: Path, model_dir: Path) -> tuple[Path, Path, SearchService]:
    photos = tmp_path / "photos"
    add_photos(photos, ["a.png", "b.png", "c.png"], seed=0)
    index(str(photos), model=str(model_dir), options=OPTIONS)
    service = SearchService(tmp_path / "photos.pm")
    return photos, tmp_path / "photos.pm", service


def sse_events(client: TestClient, url: str, **headers: str) -> list[ProgressEvent]:
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    events = []
    for block in filter(None, body.strip().split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        event = ProgressEvent.from_json(lines["data"])
        assert int(lines["id"]) == event.seq
        events.append(event)
    return events


def wait_done(client: TestClient, job_id: str) -> dict:
    for _ in range(600):
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_an_index_job_started_over_http_streams_its_progress_and_its_items_are_served(
        served: tuple[Path, Path, SearchService]) -> None:
    photos, store, service = served
    client = TestClient(create_app(service, api_key="k"), raise_server_exceptions=False)
    assert client.get("/api/health").json()["images"] == 3
    add_photos(photos, ["d.png", "e.png"], seed=1)
    (photos / "a.png").unlink()

    assert client.post("/api/jobs/index").status_code == 403  # a write: needs the key
    started = client.post("/api/jobs/index", headers={"X-API-Key": "k"})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    events = sse_events(client, f"/api/jobs/{job_id}/events")
    assert events == read_events(store, job_id)  # the stream is the job log, line for line
    assert events[0].stage == "start" and str(photos.resolve()) in events[0].message
    embedding = [e for e in events if e.stage == "embedding"]
    assert (embedding[-1].done, embedding[-1].total) == (2, 2)
    assert events[-1].state == "done" and events[-1].message.startswith("2 embedded, 0 reused, 2 unchanged, 1 removed")

    job = wait_done(client, job_id)
    assert job["state"] == "done" and client.get("/api/jobs").json()[0]["id"] == job_id
    assert client.get("/api/health").json()["images"] == 4
    names = {h["name"] for h in client.get("/api/search", params={"q": "x", "k": 10}).json()["hits"]}
    assert names == {"b.png", "c.png", "d.png", "e.png"}

    # resuming after the third event replays only the rest; after the last, nothing, at once
    resumed = sse_events(client, f"/api/jobs/{job_id}/events", **{"Last-Event-ID": "2"})
    assert [e.seq for e in resumed] == [e.seq for e in events[3:]]
    assert sse_events(client, f"/api/jobs/{job_id}/events", **{"Last-Event-ID": str(events[-1].seq)}) == []


def test_jobs_of_another_process_are_listed_and_streamed_and_its_changes_served(
        served: tuple[Path, Path, SearchService], model_dir: Path) -> None:
    photos, store, service = served
    client = TestClient(create_app(service), raise_server_exceptions=False)
    assert client.get("/api/search", params={"q": "x", "k": 10}).json()["hits"].__len__() == 3
    add_photos(photos, ["f.png"], seed=2)
    index(str(photos), store=store, options=OPTIONS)  # as `polymodal index` in a terminal would
    newest = client.get("/api/jobs").json()[0]
    assert newest["state"] == "done" and newest["message"].startswith("1 embedded")
    assert sse_events(client, f"/api/jobs/{newest['id']}/events") == read_events(store, newest["id"])
    hits = client.get("/api/search", params={"q": "x", "k": 10}).json()["hits"]
    assert "f.png" in {h["name"] for h in hits} and len(hits) == 4


def test_commits_of_a_running_job_do_not_drop_the_servers_index_but_a_reembed_is_followed(
        served: tuple[Path, Path, SearchService], tmp_path: Path) -> None:
    from polymodal.index.store import NewItem, Store

    photos, store, service = served
    client = TestClient(create_app(service), raise_server_exceptions=False)
    client.get("/api/search", params={"q": "x"})
    cached = service.searcher._indexes["image"]
    with Store(store, writable=True) as writer:  # a job mid-run: a commit, no index rebuild yet
        writer.add([NewItem(uri=str(photos / "zz.png"), modality="image", sha256="f" * 64, size=1, mtime_ns=1)],
                   np.ones((1, writer.manifest.dim), np.float32))
    client.get("/api/search", params={"q": "x"})
    assert service.searcher._indexes["image"] is cached  # searches keep the built index meanwhile

    other = save_tiny_model(tmp_path / "other", seed=1)
    before = client.get("/api/health").json()["model_id"]
    index(str(photos), store=store, model=str(other), reembed=True, options=OPTIONS)  # another process
    after = client.get("/api/search", params={"q": "x"})
    assert after.status_code == 200 and client.get("/api/health").json()["model_id"] not in ("", before)


def test_a_second_job_is_refused_while_one_runs_and_bad_job_ids_are_clear(
        served: tuple[Path, Path, SearchService]) -> None:
    _, store, service = served
    client = TestClient(create_app(service), raise_server_exceptions=False)
    job_id = jobs.new_job_id()
    path = jobs.job_file(store, job_id)
    path.write_text(ProgressEvent(job_id, 0, "running", "start", 0, 0, time.time(), "elsewhere", os.getpid(),
                                  jobs.socket.gethostname()).to_json() + "\n")
    refused = client.post("/api/jobs/index")
    assert refused.status_code == 409 and job_id in refused.json()["error"]
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "running"

    assert client.get("/api/jobs/20990101T000000-00000000").status_code == 404
    assert client.get("/api/jobs/20990101T000000-00000000/events").status_code == 404
    bad = client.get("/api/jobs/..%2F..%2Fmanifest")
    assert bad.status_code in (404, 422) and "error" in bad.json()
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422

    # a job whose process is gone ends its stream as interrupted instead of hanging
    path.write_text(json.dumps({**json.loads(path.read_text()), "pid": 2**22 + 7}) + "\n")
    events = sse_events(client, f"/api/jobs/{job_id}/events")
    assert [e.state for e in events] == ["running", "interrupted"]
    started = client.post("/api/jobs/index")
    assert started.status_code == 202 and wait_done(client, started.json()["id"])["state"] == "done"
