"""Ingest: end-to-end images/s of `polymodal index update` on a folder of JPEGs, against
the encoder's own throughput on the same images already decoded, in one run. The goal is
≥ 90% of the encoder: decoding, hashing and writing should hide behind the model.

Images: the first N Flickr8k photos of ../shared/data (128 x 128 JPEGs, as the data set
ships them), or N generated JPEGs of that size where the data is absent. Models: presets with random weights
saved as model directories (nothing is downloaded), so the figure is the pipeline's, not
a checkpoint's:
- clip-vit-b-32: 224 px, the encoder dominates;
- vit-tiny-p16-64-minilm (the quickstart's model): 64 px, decoding dominates.

For each model: the encoder alone (`encode_image` on the preprocessed images, batch 64,
in this process, with the allocator setting the command line uses), then the command
line in a subprocess, as a user runs it, on a fresh store with 0, 1 and 2 decoding
workers. The end-to-end time is the report's: listing, hashing, decoding, embedding and
committing the vectors (not loading the model or building the search index).

    python bench/ingest.py                      # writes bench/results/ingest.json
    python bench/ingest.py --model vit-tiny-p16-64-minilm --images 512
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import THREADS, write_result
from PIL import Image

from polymodal.config import TextTransformerConfig, TokenizerConfig
from polymodal.errors import TokenizerError
from polymodal.factory import create_model, get_tokenizer, get_transforms, load_model, save_model
from polymodal.index.pipeline import decode_workers
from polymodal.models.dual_encoder import DualEncoder
from polymodal.registry import get_preset
from polymodal.runtime import tune_allocator
from polymodal.tokenizer import Tokenizer, train_bpe
from polymodal.transforms import load_image

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"
MODELS = {"clip-vit-b-32": 1024, "vit-tiny-p16-64-minilm": 4096}  # preset -> images indexed
WORKERS = (0, 1, 2)
BATCH = 64


def image_folder(target: Path, count: int) -> str:
    """`count` JPEGs in `target`: Flickr8k's where present, else generated ones."""
    target.mkdir(parents=True, exist_ok=True)
    photos = sorted(FLICKR.glob("*.jpg"))[:count] if FLICKR.is_dir() else []
    if len(photos) == count:
        for photo in photos:
            shutil.copy(photo, target / photo.name)
        return f"the first {count} Flickr8k photos"
    rng = np.random.default_rng(0)
    for i in range(count):  # smooth gradients plus noise: compresses like a photo, not like flat colour
        base = np.linspace(0, 255, 128)[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 25, (128, 128, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(target / f"{i:05d}.jpg", quality=90)
    return f"{count} generated 128x128 JPEGs (no ../shared/data/flickr8k here)"


def encoder_alone(model_dir: Path, folder: Path) -> float:
    """Images/s of the image encoder on already-decoded, preprocessed images."""
    model = load_model(model_dir, "cpu")
    transform = get_transforms(model.config)
    pixels = torch.stack([transform(load_image(p)) for p in sorted(folder.glob("*.jpg"))])
    tune_allocator(True)
    try:
        with torch.inference_mode():
            model.encode_image(pixels[:BATCH])  # warm-up
            start = time.perf_counter()
            for batch in pixels.split(BATCH):
                model.encode_image(batch)
            return len(pixels) / (time.perf_counter() - start)
    finally:
        tune_allocator(False)


def index_once(model_dir: Path, folder: Path, store: Path, workers: int) -> dict[str, Any]:
    """`polymodal index update` in a subprocess; its report's images and seconds."""
    command = [sys.executable, "-m", "polymodal.cli", "index", "update", str(folder), "--store", str(store),
               "--model", str(model_dir), "--workers", str(workers), "--batch-size", str(BATCH), "--json",
               "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    (report,) = json.loads(done.stdout)["sources"]
    return {"embedded": report["embedded"], "seconds": round(report["seconds"], 2),
            "images_per_s": round(report["embedded"] / report["seconds"], 1)}


def tokenizer_for(preset: str, model: DualEncoder) -> Tokenizer:
    """The preset's tokenizer, or (for towers trained from scratch) a small BPE one: only
    images are indexed here, so its vocabulary does not matter."""
    try:
        return get_tokenizer(preset)
    except TokenizerError:
        words = ["dog", "cat", "child", "street", "water", "grass", "ball", "red", "blue", "running"]
        captions = [f"a {a} and a {b}" for a in words for b in words]
        return Tokenizer(train_bpe(captions, 300), model.config.text.context_length, TokenizerConfig())


def measure(preset: str, count: int, work: Path, workers_tried: tuple[int, ...] = WORKERS) -> dict[str, Any]:
    model_dir = work / f"model-{preset}"
    torch.manual_seed(0)
    config = get_preset(preset)
    if isinstance(config.text, TextTransformerConfig):  # pool where our small tokenizer ends texts
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, eot_token_id=2))
    model = create_model(config, pretrained=False, device="cpu").eval()
    save_model(model, tokenizer_for(preset, model), model_dir)
    folder = work / f"images-{count}"
    images = image_folder(folder, count)
    alone = encoder_alone(model_dir, folder)
    out: dict[str, Any] = {"images": images, "count": count, "encoder_alone_images_per_s": round(alone, 1)}
    for workers in workers_tried:
        run = index_once(model_dir, folder, work / f"{preset}-w{workers}.pm", workers)
        run["of_encoder"] = round(run["images_per_s"] / alone, 2)
        out[f"workers_{workers}"] = run
        print(preset, f"workers={workers}", run, f"encoder alone {alone:.1f}/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=",".join(MODELS), help=f"Presets, comma-separated, of: {', '.join(MODELS)}.")
    parser.add_argument("--images", type=int, default=0, help="Images to index (default: by model).")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="Decoding workers to try.")
    args = parser.parse_args()
    unknown = set(args.model.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    torch.set_num_threads(THREADS)
    # what `--workers` defaults to here (the summary table shows that run)
    results: dict[str, Any] = {"threads": THREADS, "batch": BATCH, "models": {},
                               "default_workers": decode_workers(None, torch.device("cpu"))}
    with tempfile.TemporaryDirectory(prefix="polymodal-ingest-") as tmp:
        for preset in args.model.split(","):
            results["models"][preset] = measure(preset, args.images or MODELS[preset], Path(tmp),
                                                tuple(int(w) for w in args.workers.split(",")))
    print("wrote", write_result("ingest", results))


if __name__ == "__main__":
    main()
