"""Job logs: the progress events the CLI bar draws and the HTTP API streams."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from polymodal.errors import StoreError
from polymodal.index import jobs
from polymodal.index.jobs import JobLog, ProgressEvent, follow, job_file, job_status, list_jobs, read_events


def test_a_job_writes_start_progress_and_done_and_subscribers_see_the_same_events(tmp_path: Path) -> None:
    seen: list[ProgressEvent] = []
    with JobLog(tmp_path, "photos/", [seen.append]) as job:
        job("embedding", 0, 3)
        job("embedding", 3, 3)
        job("index", 1, 1)
        job.summary = "3 embedded"
    written = read_events(tmp_path, job.id)
    assert seen == written
    assert [(e.seq, e.state, e.stage, e.done, e.total) for e in written] == [
        (0, "running", "start", 0, 0), (1, "running", "embedding", 0, 3), (2, "running", "embedding", 3, 3),
        (3, "running", "index", 1, 1), (4, "done", "end", 1, 1)]
    status = job_status(tmp_path, job.id)
    assert (status.source, status.state, status.stage, status.done, status.message) == (
        "photos/", "done", "index", 1, "3 embedded")
    assert read_events(tmp_path, job.id, after=2) == written[3:]


def test_progress_is_thinned_but_keeps_each_stages_first_and_last_event(tmp_path: Path) -> None:
    with JobLog(tmp_path, "src") as job:
        for done in range(1, 5001):
            job("hashing", done, 5000)
        for done in range(1, 4):
            job("embedding", done, 3)
    events = [e for e in read_events(tmp_path, job.id) if e.stage == "hashing"]
    assert 2 <= len(events) < 50
    assert (events[0].done, events[-1].done) == (1, 5000)
    embedding = [e.done for e in read_events(tmp_path, job.id) if e.stage == "embedding"]
    assert embedding[0] == 1 and embedding[-1] == 3


def test_a_failure_is_logged_with_its_error_and_still_raised(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad batch"), JobLog(tmp_path, "src") as job:
        job("embedding", 1, 10)
        raise ValueError("bad batch")
    status = job_status(tmp_path, job.id)
    assert (status.state, status.stage, status.done) == ("failed", "embedding", 1)
    assert status.message == "ValueError: bad batch"


def test_a_job_whose_process_died_reads_as_interrupted(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job_id = jobs.new_job_id()
    path = job_file(tmp_path, job_id)
    path.parent.mkdir(parents=True)
    host = jobs.socket.gethostname()
    path.write_text(ProgressEvent(job_id, 0, "running", "start", 0, 0, time.time(), "src", dead.pid, host).to_json()
                    + "\n" + ProgressEvent(job_id, 1, "running", "embedding", 5, 9, time.time(), "", dead.pid,
                                           host).to_json() + "\n")
    assert job_status(tmp_path, job_id).state == "interrupted"
    streamed = list(follow(tmp_path, job_id, interval=0.01, timeout=5))
    assert [e.stage for e in streamed] == ["start", "embedding", "end"]
    assert streamed[-1].state == "interrupted"


def test_follow_streams_events_as_another_writer_appends_them(tmp_path: Path) -> None:
    job = JobLog(tmp_path, "src")
    job.__enter__()
    started = threading.Event()

    def write() -> None:
        started.wait()
        for done in (1, 2):
            job("embedding", done, 2)
            time.sleep(0.05)
        job.__exit__(None, None, None)

    threading.Thread(target=write).start()
    started.set()
    streamed = list(follow(tmp_path, job.id, interval=0.01, timeout=10))
    assert [(e.stage, e.done) for e in streamed] == [("start", 0), ("embedding", 1), ("embedding", 2), ("end", 1)]
    assert streamed == read_events(tmp_path, job.id)


def test_half_written_and_damaged_lines_do_not_hide_the_rest(tmp_path: Path) -> None:
    with JobLog(tmp_path, "src") as job:
        job("embedding", 1, 2)
    with open(job.path, "a") as out:
        out.write('{"job": "partial')  # a writer in the middle of a line
    lines = job.path.read_text().splitlines(keepends=True)
    assert len(read_events(tmp_path, job.id)) == 3
    job.path.write_text(lines[0] + "not json\n" + "".join(lines[1:]))
    assert [e.seq for e in read_events(tmp_path, job.id)] == [0, 1, 2]


def test_jobs_are_listed_newest_first_and_old_ones_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [f"20260101T00000{n}-0000000{n}" for n in range(5)]
    for job_id in ids:
        with JobLog(tmp_path, f"src{job_id[-1]}", job_id=job_id):
            pass
    assert [j.id for j in list_jobs(tmp_path)] == ids[::-1]
    assert [j.source for j in list_jobs(tmp_path, limit=2)] == ["src4", "src3"]
    monkeypatch.setattr(jobs, "KEEP_JOBS", 3)
    with JobLog(tmp_path, "newest", job_id="20270101T000000-00000009"):
        pass
    kept = [j.id for j in list_jobs(tmp_path)]
    assert kept == ["20270101T000000-00000009", *ids[::-1][:3]]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "x", "20260101T000000-0000000g", ""])
def test_job_ids_never_name_another_file(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="not a job id"):
        job_file(tmp_path, bad)
    with pytest.raises(StoreError):
        read_events(tmp_path, bad)


def test_following_from_after_the_end_returns_at_once(tmp_path: Path) -> None:
    with JobLog(tmp_path, "src") as job:
        job("embedding", 1, 1)
    last = read_events(tmp_path, job.id)[-1].seq
    start = time.monotonic()
    assert list(follow(tmp_path, job.id, after=last)) == []  # no timeout: a hang would fail the suite
    assert time.monotonic() - start < 2
    with pytest.raises(StoreError, match="no job"):
        list(follow(tmp_path, "20260101T000000-00000000"))


def test_a_reused_process_id_does_not_keep_a_dead_job_running(tmp_path: Path) -> None:
    job_id = jobs.new_job_id()
    path = job_file(tmp_path, job_id)
    path.parent.mkdir(parents=True)
    # this very process's id, but recorded by an earlier process (another start time)
    event = ProgressEvent(job_id, 0, "running", "start", 0, 0, time.time(), "src", jobs.os.getpid(),
                          jobs.socket.gethostname(), "some-boot:12345")
    path.write_text(event.to_json() + "\n")
    assert job_status(tmp_path, job_id).state == "interrupted"
    alive = ProgressEvent(job_id, 0, "running", "start", 0, 0, time.time(), "src", jobs.os.getpid(),
                          jobs.socket.gethostname(), jobs.process_token(jobs.os.getpid()))
    path.write_text(alive.to_json() + "\n")
    assert job_status(tmp_path, job_id).state == "running"
