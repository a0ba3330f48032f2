"""Image preprocessing: polymodal's against Pillow's resize and against transformers'
CLIPImageProcessor, in one run, on one thread (each image is preprocessed on one core).

Two figures per source and output size:
- resize: `polymodal.resample.resize_rgb` (the compiled kernels, Pillow's bytes) against
  Pillow's `Image.resize` with the same box and filter, both to a (3, S, S) uint8 array,
  from images already decoded;
- end to end: a JPEG file to the model's normalised (3, S, S) float tensor, ours
  (`ImageTransform`: decoding, EXIF, resize, normalisation) against transformers'
  CLIPImageProcessor (its Pillow backend: torchvision is not installed here) with the
  same size, crop and mean/std. The largest difference of the two tensors is recorded.

Sources: the first N Flickr8k photos of ../shared/data (128 x 128 JPEGs) and N generated
500 x 375 JPEGs (the size of the original Flickr photos); outputs 64 px (our small
presets) and 224 px (ViT-B/32).

    python bench/preprocess.py                   # writes bench/results/preprocess.json
    python bench/preprocess.py --images 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import write_result
from ingest import image_folder
from PIL import Image

from polymodal import resample
from polymodal.config import PreprocessConfig
from polymodal.transforms import ImageTransform, center_crop_box, load_image

SIZES = (64, 224)


def photo_folder(target: Path, count: int) -> str:
    """`count` generated 500 x 375 JPEGs: smooth gradients, shapes and noise."""
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        base = np.linspace(0, 255, 500)[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))
        base = base + np.linspace(0, 60, 375)[:, None, None]
        pixels = np.clip(base + rng.normal(0, 20, (375, 500, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(target / f"{i:05d}.jpg", quality=90)
    return f"{count} generated 500x375 JPEGs"


def per_image_us(runs: dict[str, Callable[[], object]], count: int, rounds: int = 5) -> dict[str, float]:
    """Microseconds per image of each run over all images, the best of interleaved rounds."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], (time.perf_counter() - start) / count * 1e6)
    return best


def peer_processor(size: int) -> Any:
    try:
        from transformers import CLIPImageProcessorPil as Processor  # type: ignore[attr-defined]
    except ImportError:  # older transformers: the Pillow processor under its old name
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def measure(folder: Path, size: int) -> dict[str, Any]:
    paths = sorted(folder.glob("*.jpg"))
    images = [load_image(p) for p in paths]
    boxes = [center_crop_box(*image.size, size, size) for image in images]

    def ours_resize() -> None:
        for image, box in zip(images, boxes, strict=True):
            resample.resize_rgb(image, (size, size), "bicubic", box, channels_first=True)

    def pillow_resize() -> None:
        for image, box in zip(images, boxes, strict=True):
            np.ascontiguousarray(np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))
                                 .transpose(2, 0, 1))

    transform = ImageTransform(PreprocessConfig(image_size=size))
    processor = peer_processor(size)

    def ours_end_to_end() -> None:
        for path in paths:
            transform(path)

    def peer_end_to_end() -> None:
        for path in paths:
            processor(Image.open(path), return_tensors="pt")

    same_bytes = all(np.array_equal(resample.resize_rgb(image, (size, size), "bicubic", box),
                                    np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box)))
                     for image, box in zip(images, boxes, strict=True))
    difference = max(float((transform(p) - processor(Image.open(p), return_tensors="pt")["pixel_values"][0])
                           .abs().max()) for p in paths[:50])
    timed = per_image_us({"ours_resize": ours_resize, "pillow_resize": pillow_resize,
                          "ours_end_to_end": ours_end_to_end, "peer_end_to_end": peer_end_to_end}, len(paths))
    out: dict[str, Any] = {f"{k}_us": round(v, 1) for k, v in timed.items()}
    out.update({"resize_over_pillow": round(timed["pillow_resize"] / timed["ours_resize"], 2),
                "end_to_end_over_peer": round(timed["peer_end_to_end"] / timed["ours_end_to_end"], 2),
                "resize_bytes_equal_to_pillow": same_bytes, "max_abs_diff_vs_peer": difference,
                "kernels": resample.isa()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="Images per source.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {"threads": 1, "sources": {}}
    with tempfile.TemporaryDirectory(prefix="polymodal-preprocess-") as tmp:
        sources = {"flickr-128": (Path(tmp) / "flickr", image_folder), "photo-500x375": (Path(tmp) / "photos",
                                                                                          photo_folder)}
        for name, (folder, make) in sources.items():
            described = make(folder, args.images)
            results["sources"][name] = {"images": described, "count": args.images, "sizes": {}}
            for size in SIZES:
                run = measure(folder, size)
                results["sources"][name]["sizes"][str(size)] = run
                print(name, size, run, flush=True)
    print("wrote", write_result("preprocess", results))


if __name__ == "__main__":
    main()
