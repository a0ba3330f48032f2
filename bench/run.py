"""The one benchmark command: run the benchmark scripts, then rewrite the summary table
of BENCHMARKS.md from their JSON results (each figure beside its peer from the same run,
and as a share of this machine's ceilings, measured first).

    python bench/run.py                          # all of SCRIPTS, on this machine's CPU
    python bench/run.py --only ceilings,search   # some of them
    python bench/run.py --table                  # only rewrite the table from existing results

A script that fails is reported and the others still run; the table then keeps that
benchmark's previous results (their commit and date are in the table). The GPU figures
come from `--device cuda` runs of ceilings.py, encoders.py and train_step.py on a machine
with one (their results, *-cuda.json, join the table the same way).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import summary
from common import parse_names

BENCH = Path(__file__).parent
SCRIPTS = ("ceilings", "search", "encoders", "text_bulk", "train_step", "ingest", "preprocess", "serve_load",
           "cpu_precision")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCRIPTS), help=f"Comma-separated, from: {', '.join(SCRIPTS)}.")
    parser.add_argument("--table", action="store_true", help="Skip the benchmarks; rewrite the table only.")
    args = parser.parse_args()
    chosen = [] if args.table else parse_names(parser, args.only, SCRIPTS, "benchmark")
    failed = []
    for name in chosen:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, str(BENCH / f"{name}.py")], cwd=BENCH.parent)
        print(f"== {name}: {'ok' if done.returncode == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if done.returncode:
            failed.append(name)
    summary.main()
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (the table keeps their previous results)")


if __name__ == "__main__":
    main()
