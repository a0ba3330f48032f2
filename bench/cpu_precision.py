"""Does bf16 autocast help on this CPU? Matrix-multiply GFLOP/s and the training
throughput (forward + backward) of the small image towers, fp32 against bf16, in one
run. The answer decides what `precision = "auto"` picks (polymodal/inference.py).

    python bench/cpu_precision.py        # writes bench/results/cpu_precision.json
"""

from __future__ import annotations

import time

import torch
from common import write_result

from polymodal.factory import create_model


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def tower_images_per_s(preset: str, bf16: bool, batch: int = 128, repeats: int = 4) -> float:
    torch.manual_seed(0)
    model = create_model(preset, pretrained=False, device="cpu").train()
    size = model.config.preprocess.image_size
    images = torch.randn(batch, 3, size, size)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            embeds = model.encode_image(images)
        embeds.float().square().sum().backward()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    results = {"matmul_2048": {}, "image_tower_train_images_per_s": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        results["matmul_2048"][f"{name}_gflops"] = round(matmul_gflops(dtype), 1)
    for preset in ("vit-tiny-64", "vit-tiny-p16-64-minilm", "resnet-small-64"):
        fp32, bf16 = tower_images_per_s(preset, False), tower_images_per_s(preset, True)
        results["image_tower_train_images_per_s"][preset] = {
            "fp32": round(fp32, 1), "bf16": round(bf16, 1), "bf16_over_fp32": round(bf16 / fp32, 2)}
    path = write_result("cpu_precision", results)
    print(path.read_text())


if __name__ == "__main__":
    main()
