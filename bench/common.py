"""Shared by the benchmark scripts: machine description, commit, date, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


THREADS = 2  # the reference machine's cores; every benchmark runs with this many threads


def read_bandwidth_gbs(n_bytes: int = 2 << 30, repeats: int = 5) -> float:
    """Best-of read bandwidth (GB/s) of a parallel sum over a buffer far larger than cache."""
    torch.set_num_threads(THREADS)
    buffer = torch.ones(n_bytes // 4, dtype=torch.float32)
    buffer.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return n_bytes / best / 1e9


def write_result(name: str, results: dict[str, Any]) -> Path:
    """bench/results/NAME.json with the machine, commit and date alongside the numbers."""
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": name, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "commit": commit(), "machine": machine(), "results": results}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def per_second(run: Callable[[], object], items: int, seconds: float = 3.0, device: str = "cpu") -> float:
    """Items per second: the median of timed calls after a warm-up, for about `seconds`.
    On a GPU each call is synchronised, so the time is the kernels', not the launch's."""
    def call() -> float:
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    call()
    times: list[float] = []
    while sum(times) < seconds or len(times) < 3:
        times.append(call())
    return items / statistics.median(times)


def interleaved_rates(runs: dict[str, Callable[[], object]], items: int, rounds: int = 3, seconds: float = 1.0,
                      device: str = "cpu", before: Callable[[str], object] | None = None) -> dict[str, float]:
    """Items per second of each run, timed in `rounds` interleaved rounds (a, b, c, a, b, c,
    ...) so that a slow spell of a shared machine hits every variant alike; each figure is
    the best round's median. `before(name)` is called ahead of each timing (a setting to
    switch, say)."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            if before is not None:
                before(name)
            best[name] = max(best[name], per_second(run, items, seconds, device))
    return best
