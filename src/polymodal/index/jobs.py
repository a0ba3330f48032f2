"""Index jobs and their progress events: one stream for the CLI progress bar and the HTTP API.

Every indexing run (`polymodal index`, the Python `index()`, or a job started over HTTP) is
a job. Its progress events are appended as JSON lines to `STORE/jobs/ID.jsonl`; the CLI
bar draws them as they are written, `polymodal index watch` draws them from another
terminal, and `GET /api/jobs/ID/events` streams the same lines to a browser, including
jobs that another process runs on the same store.

    with JobLog(store_path, "photos/", subscribers=[print]) as job:
        index_source(store, encoder, "photos/", progress=job)   # job(stage, done, total)
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from polymodal.errors import StoreError

JOBS_DIR = "jobs"
KEEP_JOBS = 50  # earlier job logs kept when a job starts
EVENTS_PER_SECOND = 4  # progress events per stage and second; first and last of a stage always
JOB_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{8}")
TERMINAL = ("done", "failed", "interrupted")

State = Literal["running", "done", "failed", "interrupted"]


@dataclass(frozen=True)
class ProgressEvent:
    """One line of a job log. `stage` is start, listing, hashing, embedding, captions, index or
    end; `done`/`total` count the stage's items; `message` carries the source (start), the
    summary (done) or the error (failed)."""

    job: str
    seq: int
    state: State
    stage: str
    done: int
    total: int
    time: float
    message: str = ""
    pid: int = 0
    host: str = ""
    process: str = ""  # process_token(pid) of the writer: ids are reused

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ProgressEvent:
        return cls(**json.loads(line))


Subscriber = Callable[[ProgressEvent], None]


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def jobs_dir(store_path: str | Path) -> Path:
    return Path(store_path) / JOBS_DIR


def job_file(store_path: str | Path, job_id: str) -> Path:
    if not JOB_ID.fullmatch(job_id):  # ids come from URLs: never let one name another file
        raise StoreError(f"not a job id: {job_id!r}")
    return jobs_dir(store_path) / f"{job_id}.jsonl"


class JobLog:
    """Writes one job's events, and hands each to its subscribers as it is written.

    Call it as a progress callback, `job(stage, done, total)`; progress is thinned to
    EVENTS_PER_SECOND per stage, keeping each stage's first and last event. As a context
    manager it writes the start event, and a done or failed event at the end."""

    def __init__(self, store_path: str | Path, source: str, subscribers: Sequence[Subscriber] = (),
                 job_id: str | None = None) -> None:
        self.id = job_id or new_job_id()
        self.path = job_file(store_path, self.id)
        self.source = source
        self.subscribers = list(subscribers)
        self.summary = "finished"  # the done event's message; the caller may say more
        self._seq = 0
        self._stage = ""
        self._last_emit = 0.0
        self._host = socket.gethostname()
        self._process = process_token(os.getpid())

    def __enter__(self) -> JobLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        prune_jobs(self.path.parent.parent)
        self._emit("running", "start", 0, 0, self.source)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if err is None:
            self._emit("done", "end", 1, 1, self.summary)
        elif isinstance(err, KeyboardInterrupt):
            self._emit("interrupted", "end", 0, 1, "interrupted by the user")
        else:
            self._emit("failed", "end", 0, 1, f"{type(err).__name__}: {err}")

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        boundary = stage != self._stage or done == 0 or done >= total
        if boundary or now - self._last_emit >= 1 / EVENTS_PER_SECOND:
            self._stage, self._last_emit = stage, now
            self._emit("running", stage, done, total)

    def _emit(self, state: State, stage: str, done: int, total: int, message: str = "") -> None:
        event = ProgressEvent(self.id, self._seq, state, stage, done, total, time.time(), message,
                              os.getpid(), self._host, self._process)
        self._seq += 1
        with open(self.path, "a", encoding="utf-8") as out:  # one write per line: readers never see half
            out.write(event.to_json() + "\n")
        for subscriber in self.subscribers:
            subscriber(event)


# ----------------------------------------------------------------- reading


@dataclass(frozen=True)
class JobStatus:
    id: str
    source: str
    state: State
    stage: str
    done: int
    total: int
    started: float
    updated: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_events(store_path: str | Path, job_id: str, after: int = -1) -> list[ProgressEvent]:
    """The job's events with seq > `after` (a line still being written is left for later)."""
    path = job_file(store_path, job_id)
    if not path.is_file():
        raise StoreError(f"no job {job_id} in {store_path}")
    events = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.endswith("\n"):
                break
            try:
                event = ProgressEvent.from_json(line)
            except (ValueError, TypeError):
                continue  # a damaged line must not hide the rest of the job
            if event.seq > after:
                events.append(event)
    return events


def job_status(store_path: str | Path, job_id: str) -> JobStatus:
    events = read_events(store_path, job_id)
    if not events:
        raise StoreError(f"job {job_id} has no events yet")
    first, last = events[0], events[-1]
    progress = next((e for e in reversed(events) if e.stage not in ("start", "end")), first)
    state = last.state
    if state == "running" and not _alive(last):
        state = "interrupted"  # its process is gone without writing an end
    message = last.message if last.stage == "end" else ""
    return JobStatus(job_id, first.message, state, progress.stage, progress.done, progress.total,
                     first.time, last.time, message)


def list_jobs(store_path: str | Path, limit: int = 20) -> list[JobStatus]:
    """The newest jobs first."""
    folder = jobs_dir(store_path)
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob("*.jsonl"):
        if JOB_ID.fullmatch(path.stem):
            try:
                out.append(job_status(store_path, path.stem))
            except StoreError:
                continue  # created, no event yet
    # by start time: ids begin with the second, which two jobs may share
    return sorted(out, key=lambda job: (job.started, job.id), reverse=True)[:limit]


def poll(store_path: str | Path, job_id: str, after: int = -1) -> tuple[list[ProgressEvent], bool]:
    """(events with seq > `after`, whether the job has ended). A job whose process died
    without an end event ends with a made-up "interrupted" event. A log that is missing
    for a moment (a re-embed swapping the store folder) reads as no news."""
    try:
        events = read_events(store_path, job_id)
    except StoreError:
        return [], False
    if not events:
        return [], False
    new = [e for e in events if e.seq > after]
    last = events[-1]
    if last.state in TERMINAL:
        return new, True
    if not _alive(last):
        return [*new, ProgressEvent(job_id, last.seq + 1, "interrupted", "end", 0, 1, time.time(),
                                    "the indexing process ended without finishing", last.pid, last.host,
                                    last.process)], True
    return new, False


def follow(store_path: str | Path, job_id: str, after: int = -1, interval: float = 0.2,
           timeout: float | None = None) -> Iterator[ProgressEvent]:
    """The job's events as they are written, until it ends (or its process dies), or
    until `timeout` seconds have passed."""
    read_events(store_path, job_id)  # an unknown job fails now, not by waiting forever
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        events, ended = poll(store_path, job_id, after)
        for event in events:
            yield event
            after = event.seq
        if ended or (deadline is not None and time.monotonic() > deadline):
            return
        time.sleep(interval)


def prune_jobs(store_path: str | Path, keep: int | None = None) -> None:
    """Delete the oldest finished job logs beyond `keep` (default KEEP_JOBS)."""
    for status in list_jobs(store_path, limit=10**9)[KEEP_JOBS if keep is None else keep:]:
        if status.state != "running":
            job_file(store_path, status.id).unlink(missing_ok=True)


def process_token(pid: int) -> str:
    """What tells this process apart from a later one with the same id: the boot id and
    the process's start time (Linux /proc); "" where /proc is not there."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (command) "
    return f"{boot}:{fields[19]}"  # field 22 of stat: start time in clock ticks since boot


def _alive(event: ProgressEvent) -> bool:
    if event.host != socket.gethostname():
        return True  # another machine's job: we cannot tell, so trust its log
    try:
        os.kill(event.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # the id may belong to a newer process now (a restarted container keeps its host name)
    return not event.process or process_token(event.pid) in ("", event.process)
