"""This machine's ceilings, which the summary table measures every figure against:
matrix-multiply GFLOP/s in fp32 and bf16 (torch, 2048 x 2048, best of several) and
memory read bandwidth (GB/s, a parallel sum over 2 GiB).

    python bench/ceilings.py        # writes bench/results/ceilings.json
"""

from __future__ import annotations

import time

import torch
from common import THREADS, read_bandwidth_gbs, write_result


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main() -> None:
    torch.set_num_threads(THREADS)
    results = {"fp32_gflops": round(matmul_gflops(torch.float32), 1),
               "bf16_gflops": round(matmul_gflops(torch.bfloat16), 1),
               "read_bandwidth_gbs": round(read_bandwidth_gbs(), 2)}
    print(results)
    print("wrote", write_result("ceilings", results))


if __name__ == "__main__":
    main()
