"""Shared by the benchmark scripts: machine description, commit, date, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
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
                      device: str = "cpu") -> dict[str, float]:
    """Items per second of each run, timed in `rounds` interleaved rounds (a, b, c, a, b, c,
    ...) so that a slow spell of a shared machine hits every variant alike; each figure is
    the best round's median."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = max(best[name], per_second(run, items, seconds, device))
    return best


# ------------------------------------------------------------------ allocator variants
#
# glibc's mallopt switches its adaptive mmap threshold off for the life of the process, so
# "the default allocator" can only be timed in a process that never called it. Scripts that
# compare both settings time each in child processes of their own (`--allocator`), rounds
# alternating between the two, and keep each variant's best round.

ALLOCATORS = ("system", "tuned")


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """The options a script's child processes are started with (not for users)."""
    parser.add_argument("--allocator", choices=ALLOCATORS, default="system", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default="", help=argparse.SUPPRESS)


def start_child(args: argparse.Namespace) -> bool:
    """In a child process: apply its allocator setting; True if this is one."""
    if args.allocator == "tuned":
        from polymodal.runtime import tune_allocator

        if not tune_allocator(True):
            raise SystemExit("the tuned allocator could not be applied here (not glibc?)")
    return bool(args.child_out)


def finish_child(args: argparse.Namespace, rates: dict[str, dict[str, float]]) -> None:
    Path(args.child_out).write_text(json.dumps(rates))


def rates_in_child_processes(script: str, argv: list[str], variants: dict[str, list[str]],
                             rounds: int = 3) -> dict[str, dict[str, float]]:
    """{key: {variant: items/s}} from `python script *argv` run as children, `rounds` times
    per allocator in `variants` ({allocator: [variant, ...]}), alternating allocators; each
    variant's best round. Variants timed with the tuned allocator get the suffix "_tuned"."""
    best: dict[str, dict[str, float]] = {}
    env = {k: v for k, v in os.environ.items() if k != "POLYMODAL_ALLOCATOR"} | {"OMP_NUM_THREADS": str(THREADS)}
    order = list(variants.items())
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rates.json"
        for round_ in range(rounds):
            for allocator, names in order if round_ % 2 == 0 else order[::-1]:  # neither always goes first
                command = [sys.executable, str(Path(__file__).parent / script), *argv, "--allocator", allocator,
                           "--variants", ",".join(names), "--child-out", str(out)]
                subprocess.run(command, check=True, env=env)
                suffix = "_tuned" if allocator == "tuned" else ""
                for key, rates in json.loads(out.read_text()).items():
                    row = best.setdefault(key, {})
                    for name, rate in rates.items():
                        row[name + suffix] = max(row.get(name + suffix, 0.0), rate)
    return best


def parse_names(parser: argparse.ArgumentParser, value: str, known: Iterable[str],
                noun: str = "architecture") -> list[str]:
    """A comma-separated option value (`--arch a,b`) as a list, or a parser error naming the
    unknown names and the choices."""
    names, choices = [n.strip() for n in value.split(",") if n.strip()], list(known)
    unknown = sorted(set(names) - set(choices))
    if unknown:
        parser.error(f"unknown {noun}(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names
