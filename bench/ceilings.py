"""This machine's ceilings, which the summary table measures every figure against:
matrix-multiply GFLOP/s in fp32 and bf16 (torch, 2048 x 2048, best of several) and
memory read bandwidth (GB/s, a parallel sum over 2 GiB).

    python bench/ceilings.py                  # writes bench/results/ceilings.json
    python bench/ceilings.py --device cuda    # a GPU's: 8192 x 8192 products, device-to-device copy
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from common import THREADS, read_bandwidth_gbs, write_result


def best_seconds(run: Callable[[], object], device: str, repeats: int = 10) -> float:
    for _ in range(2):
        run()
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype, n: int = 2048, device: str = "cpu") -> float:
    a, b = torch.randn(n, n).to(device, dtype), torch.randn(n, n).to(device, dtype)
    return 2 * n**3 / best_seconds(lambda: a @ b, device) / 1e9


def copy_bandwidth_gbs(device: str, n_bytes: int = 4 << 30) -> float:
    """A GPU's device-to-device copy, counting the bytes read and written."""
    source = torch.ones(n_bytes // 4, device=device)
    target = torch.empty_like(source)
    return 2 * n_bytes / best_seconds(lambda: target.copy_(source), device) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU.")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.device == "cpu":
        results = {"fp32_gflops": round(matmul_gflops(torch.float32), 1),
                   "bf16_gflops": round(matmul_gflops(torch.bfloat16), 1),
                   "read_bandwidth_gbs": round(read_bandwidth_gbs(), 2)}
    else:
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no GPU here")
        results = {"device": torch.cuda.get_device_name(),
                   "fp32_gflops": round(matmul_gflops(torch.float32, 8192, args.device), 1),
                   "tf32_allowed": torch.backends.cuda.matmul.allow_tf32,
                   "bf16_gflops": round(matmul_gflops(torch.bfloat16, 8192, args.device), 1),
                   "copy_bandwidth_gbs": round(copy_bandwidth_gbs(args.device), 1)}
    print(results)
    print("wrote", write_result("ceilings" if args.device == "cpu" else "ceilings-cuda", results))


if __name__ == "__main__":
    main()
