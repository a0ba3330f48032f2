"""`polymodal classify`: label every image of a folder with the nearest of a list of
class names (zero-shot), with scores, and "unknown" below a similarity threshold.

    rows = classify_folder(model, tokenizer, transform, "photos/", ["cat", "dog"], threshold=0.25)
    write_rows(rows, "labels.csv")
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from polymodal.checkpoint import write_text_atomic
from polymodal.data.records import ImageRef
from polymodal.data.sources import IMAGE_EXTENSIONS, image_files
from polymodal.errors import DataError
from polymodal.eval.embed import Progress, embed_images
from polymodal.eval.zeroshot import class_embeddings
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageTransform

UNKNOWN = "unknown"


@dataclass
class Labelled:
    file: str
    label: str  # the best class, UNKNOWN below the threshold, "" when unreadable
    score: float  # cosine similarity to the best class
    probability: float  # softmax over the classes at the model's temperature (sigmoid for SigLIP models)
    top: list[tuple[str, float]]  # the k best classes with their similarities
    error: str = ""  # why an image could not be read


def parse_labels(spec: Sequence[str]) -> list[str]:
    """Class names from comma-separated values and/or text files (one name per line)."""
    labels: list[str] = []
    for item in spec:
        path = Path(item)
        if path.suffix == ".txt" or (path.is_file() and "," not in item):
            if not path.is_file():
                raise DataError(f"{item}: no such labels file")
            labels += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            labels += [part.strip() for part in item.split(",") if part.strip()]
    labels = list(dict.fromkeys(labels))
    if len(labels) < 2:
        raise DataError(f"classify needs at least two labels, got {labels}")
    return labels


def list_images(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{folder}: no such folder")
    files = image_files(root)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def classify_folder(model: DualEncoder, tokenizer: Tokenizer, transform: ImageTransform, folder: str | Path,
                    labels: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",),
                    threshold: float | None = None, top_k: int = 3, batch_size: int = 128,
                    dtype: torch.dtype | None = None, progress: Progress | None = None) -> list[Labelled]:
    """One row per image file of `folder` (recursively), in path order; unreadable files
    get a row with `error` set instead of stopping the run."""
    files = list_images(folder)
    classes = class_embeddings(model, tokenizer, [[label] for label in labels], templates, dtype)
    try:
        images = embed_images(model, [ImageRef(str(f)) for f in files], transform, batch_size, dtype=dtype,
                              progress=progress)
    except DataError:  # every file unreadable: still report each one
        return [Labelled(str(f), "", float("nan"), float("nan"), [], "unreadable image") for f in files]
    scores = images.embeds @ classes.T
    probabilities = class_probabilities(model, scores)
    rows: dict[int, Labelled] = {}
    for row, i in enumerate(images.kept):
        order = np.argsort(-scores[row], kind="stable")[:top_k]
        best = int(order[0])
        score = float(scores[row, best])
        label = UNKNOWN if threshold is not None and score < threshold else labels[best]
        rows[int(i)] = Labelled(str(files[i]), label, score, float(probabilities[row, best]),
                                [(labels[j], float(scores[row, j])) for j in order])
    errors = dict(images.skipped)
    return [rows.get(i) or Labelled(str(f), "", float("nan"), float("nan"), [], errors.get(str(f), "unreadable"))
            for i, f in enumerate(files)]


def class_probabilities(model: DualEncoder, scores: np.ndarray) -> np.ndarray:
    """(N, C) cosine similarities -> probabilities at the model's temperature: a softmax over
    the classes, or for SigLIP models (which have a logit bias) an independent sigmoid each."""
    scale, bias = model.logit_params()
    logits = float(scale.detach()) * scores
    if bias is not None:
        return 1.0 / (1.0 + np.exp(-(logits + float(bias.detach()))))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def write_rows(rows: Sequence[Labelled], out: str | Path) -> None:
    """CSV (file, label, score, probability, top, error) or JSON, by the file suffix."""
    out = Path(out)
    if out.suffix not in (".csv", ".json"):
        raise DataError(f"{out}: the output must end in .csv or .json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        text = json.dumps([{"file": r.file, "label": r.label, "score": _finite(r.score),
                            "probability": _finite(r.probability),
                            "top": [{"label": lab, "score": s} for lab, s in r.top], "error": r.error}
                           for r in rows], indent=2) + "\n"
    else:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["file", "label", "score", "probability", "top", "error"])
        for r in rows:
            writer.writerow([r.file, r.label, _cell(r.score), _cell(r.probability),
                             "; ".join(f"{lab} {s:.4f}" for lab, s in r.top), r.error])
        text = buffer.getvalue()
    write_text_atomic(out, text)


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 6)


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.4f}"
