"""This machine's ceilings, which the summary table measures every figure against:
matrix-multiply GFLOP/s in fp32 and bf16 (torch, 2048 x 2048, best of several) and
memory read bandwidth (GB/s, a parallel sum over 2 GiB). The fp32 ceiling is the faster of
torch's default product (MKL on x86) and oneDNN's on a prepacked weight, which polymodal's
linear layers use (polymodal/models/linear.py): on the reference Zen 4 oneDNN's is about
15% faster, and a ceiling from MKL alone would let our products exceed 100% of it.

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


def packed_matmul_gflops(n: int = 2048) -> float:
    """fp32 x @ W^T through oneDNN with W prepacked (0 where torch has no oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0.0
    x, weight = torch.randn(n, n), torch.randn(n, n)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    return 2 * n**3 / best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
                                   "cpu") / 1e9


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
        default, packed = matmul_gflops(torch.float32), packed_matmul_gflops()
        results = {"fp32_gflops": round(max(default, packed), 1), "fp32_gflops_default": round(default, 1),
                   "fp32_gflops_onednn_packed": round(packed, 1),
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
