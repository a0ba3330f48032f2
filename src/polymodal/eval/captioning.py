"""Captioning evaluation: write a caption for every image of a captions source and score
them against its reference captions with corpus BLEU-1..4 and CIDEr-D
(eval/caption_metrics.py; BLEU in percent, CIDEr as coco-caption reports it).

    evaluation = evaluate_captioner("runs/flickr8k-cap/model", "recipes/eval/flickr8k-test.toml")
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from polymodal.config import PreprocessConfig
from polymodal.data.records import PairRecord
from polymodal.errors import DataError
from polymodal.eval.caption_metrics import caption_scores
from polymodal.eval.embed import pixel_batches
from polymodal.eval.report import Evaluation
from polymodal.inference import autocast, model_device
from polymodal.models.captioner import Captioner
from polymodal.tokenizer import Tokenizer

EXAMPLES = 20  # captions shown in the report


@torch.no_grad()
def caption_records(model: Captioner, tokenizer: Tokenizer, preprocess: PreprocessConfig, records: list[PairRecord],
                    beam_size: int = 1, length_penalty: float = 0.6, batch_size: int = 64,
                    dtype: torch.dtype | None = None) -> list[str]:
    """One generated caption per record's image."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    out: list[str] = []
    for _, pixels in pixel_batches(records, preprocess, batch_size, device):
        with autocast(device, dtype):
            ids = model.generate(pixels, beam_size=beam_size, length_penalty=length_penalty)
        out += [tokenizer.decode(row) for row in ids]
    model.train(was_training)
    return out


def evaluate_captioner(model_dir: str | Path, data: str, beam_size: int = 1, length_penalty: float = 0.6,
                       device: str = "cpu") -> Evaluation:
    from polymodal.eval.runner import load_data
    from polymodal.task_models import load_captioner

    start = time.perf_counter()
    model, tokenizer = load_captioner(model_dir, device)
    pairs = load_data(data)
    if not pairs.records:
        raise DataError(f"{data}: no images with captions")
    written = caption_records(model, tokenizer, model.cfg.preprocess, pairs.records, beam_size, length_penalty)
    scores = caption_scores(written, [list(r.captions) for r in pairs.records])
    metrics = {k: 100 * v if k.startswith("bleu") else v for k, v in scores.items()}
    examples = [{"image": r.image.name, "written": text, "reference": r.captions[0]}
                for r, text in zip(pairs.records[:EXAMPLES], written, strict=False)]
    return Evaluation("caption", metrics, "cider",
                      info={"model": str(model_dir), "data": pairs.name, "images": len(pairs.records),
                            "beam_size": beam_size, "length_penalty": length_penalty,
                            "metrics": "corpus BLEU-1..4 (percent) and CIDEr-D, coco-caption's definitions "
                                       "(polymodal.eval.caption_metrics)",
                            "seconds": round(time.perf_counter() - start, 1)},
                      skipped=list(pairs.dropped.items()), tables={"examples": examples})
