"""A bounded load test of `polymodal serve` on 127.0.0.1: N concurrent clients send text
searches (Flickr8k captions from the store) for a fixed time; reports requests/s, p50 /
p90 / p99 latency and the error count.

    python bench/serve_load.py [--store bench/stores/shared.pm] [--clients 1,4,16] [--seconds 20]

Starts the server itself (a subprocess, so client and server do not share a GIL) and
writes bench/results/serve_load.json. The store is the one bench/search.py builds.
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import write_result

from polymodal.index.store import Store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(store: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "polymodal.cli", "serve", str(store), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).raise_for_status()
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server stopped: {proc.communicate()[1]}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start in 300 s")


def run_clients(base: str, queries: list[str], clients: int, seconds: float, k: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=30) as http:
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    response = http.get("/api/search", params={"q": rng.choice(queries), "k": k})
                    ok = response.status_code == 200
                    problem = "" if ok else f"HTTP {response.status_code}"
                except httpx.HTTPError as err:
                    problem = type(err).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else 0.0

    return {"clients": clients, "seconds": round(wall, 1), "requests": len(latencies) + len(errors),
            "requests_per_s": round(len(latencies) / wall, 1), "p50_ms": pct(0.50), "p90_ms": pct(0.90),
            "p99_ms": pct(0.99), "errors": len(errors), "error_kinds": sorted(set(errors))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("bench/stores/shared.pm"))
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--k", type=int, default=24)
    args = parser.parse_args()
    with Store(args.store) as store:
        queries = [item.text or "" for item in store.live_items("text")][:5000]
    if not queries:
        raise SystemExit(f"{args.store} has no captions to use as queries")
    port = free_port()
    server = start_server(args.store, port)
    try:
        rows = [run_clients(f"http://127.0.0.1:{port}", queries, int(n), args.seconds, args.k)
                for n in args.clients.split(",")]
    finally:
        server.terminate()
        server.wait(timeout=30)
    for row in rows:
        print(row)
    print("wrote", write_result("serve_load", {"store": str(args.store), "k": args.k, "runs": rows}))


if __name__ == "__main__":
    main()
