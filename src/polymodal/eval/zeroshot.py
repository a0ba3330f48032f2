"""Zero-shot classification: each class becomes a text embedding (class names and
synonyms filled into prompt templates, averaged as in CLIP's prompt ensembling), and an
image is labelled by the class embedding nearest to it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.data.records import PairSet
from polymodal.errors import DataError
from polymodal.eval.embed import Progress, embed_images
from polymodal.eval.metrics import (
    Ranking,
    balanced_accuracy,
    confusion_matrix,
    per_class_accuracy,
    suggest_threshold,
)
from polymodal.eval.report import Evaluation, Plot, sample_values
from polymodal.inference import embed_texts
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageTransform

PRIMARY_METRIC = "top1"
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# The 7 templates CLIP's authors found best on ImageNet (the CLIP repository's prompt
# engineering notebook), plus the default one.
ENSEMBLE_TEMPLATES = ("a photo of a {}.", "itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                      "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                      "a photo of the small {}.")
TEMPLATE_SETS = {"default": DEFAULT_TEMPLATES, "ensemble": ENSEMBLE_TEMPLATES}


def resolve_templates(spec: Sequence[str]) -> tuple[str, ...]:
    """Template strings, or the names "default" / "ensemble"; each needs one {}."""
    out: list[str] = []
    for item in spec:
        if item in TEMPLATE_SETS:
            out += TEMPLATE_SETS[item]
        elif item.count("{}") == 1:
            out.append(item)
        else:
            raise DataError(f"template {item!r} needs exactly one {{}} for the class name "
                            f"(or use one of {sorted(TEMPLATE_SETS)})")
    if not out:
        raise DataError("at least one prompt template is needed")
    return tuple(dict.fromkeys(out))


def class_embeddings(model: DualEncoder, tokenizer: Tokenizer, class_names: Sequence[Sequence[str]],
                     templates: Sequence[str], dtype: torch.dtype | None = None) -> np.ndarray:
    """(C, E) L2-normalised: for class c, the mean of the embeddings of every template
    filled with every name of class_names[c] (its name, then synonyms), renormalised."""
    texts = [t.format(name) for names in class_names for name in names for t in templates]
    counts = [len(names) * len(templates) for names in class_names]
    if min(counts, default=0) == 0:
        raise DataError("every class needs at least one name")
    model.eval()
    embeds = embed_texts(model, tokenizer, texts, dtype=dtype)
    owner = torch.repeat_interleave(torch.arange(len(class_names)), torch.tensor(counts))
    summed = torch.zeros(len(class_names), embeds.shape[1]).index_add_(0, owner, embeds.cpu())
    return F.normalize(summed, dim=-1).numpy()


def zeroshot_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """scores (N, C) image-class similarities; labels (N,). Accuracies in percent."""
    ranking = Ranking(scores, labels[:, None] == np.arange(scores.shape[1])[None, :])
    metrics = {"top1": 100.0 * float(ranking.recall_at(1).mean())}
    if scores.shape[1] >= 5:
        metrics["top5"] = 100.0 * float(ranking.recall_at(5).mean())
    metrics["balanced_accuracy"] = 100.0 * balanced_accuracy(scores, labels)
    metrics["mean_rank"] = float(ranking.first_positive_rank().mean())
    return metrics


def evaluate_zeroshot(model: DualEncoder, tokenizer: Tokenizer, transform: ImageTransform, data: PairSet,
                      templates: Sequence[str] = DEFAULT_TEMPLATES, synonyms: bool = False, batch_size: int = 128,
                      num_workers: int = 0, dtype: torch.dtype | None = None,
                      progress: Progress | None = None) -> Evaluation:
    """Top-1/top-5 and balanced accuracy over a labelled set (class folders or a label table)."""
    if not data.class_names:
        raise DataError(f"{data.name}: zero-shot needs labelled images (class folders or a classes table), "
                        "not captions")
    if len(data.class_names) < 2:
        raise DataError(f"{data.name}: zero-shot classification needs at least two classes, got "
                        f"{data.class_names}")
    start = time.perf_counter()
    names = [(name, *(data.class_synonyms[c] if synonyms and data.class_synonyms else ()))
             for c, name in enumerate(data.class_names)]
    classes = class_embeddings(model, tokenizer, names, templates, dtype)
    images = embed_images(model, [r.image for r in data.records], transform, batch_size, num_workers, dtype,
                          progress)
    labels = np.array([data.records[i].group for i in images.kept])
    scores = images.embeds @ classes.T
    metrics = zeroshot_metrics(scores, labels)
    matrix = confusion_matrix(scores, labels)
    accuracy = per_class_accuracy(scores, labels)
    own = scores[np.arange(len(labels)), labels]
    others = scores[labels[:, None] != np.arange(scores.shape[1])[None, :]]
    threshold = suggest_threshold(own, others)
    metrics["threshold"] = threshold.threshold
    present = ~np.isnan(accuracy)
    worst_first = sorted((int(c) for c in np.flatnonzero(present)), key=lambda c: float(accuracy[c]))
    rows = [{"class": data.class_names[c], "images": int((labels == c).sum()), "accuracy": 100.0 * float(accuracy[c]),
             "most confused with": _most_confused(matrix, c, data.class_names)} for c in worst_first]
    return Evaluation(
        task="zeroshot", metrics=metrics, primary_metric=PRIMARY_METRIC,
        info={"data": data.name, "images": len(labels), "classes": len(data.class_names),
              "templates": list(templates), "synonyms": synonyms, "seconds": round(time.perf_counter() - start, 1)},
        skipped=images.skipped + sorted(data.dropped.items()),
        plots=[Plot("confusion", "Confusion matrix (rows: true class)",
                    {"matrix": matrix.tolist(), "classes": data.class_names}),
               Plot("per_class", "Per-class top-1 accuracy",
                    {"accuracy": accuracy[present].tolist(),
                     "classes": [data.class_names[c] for c in np.flatnonzero(present)]}),
               Plot("similarity_histogram", "Similarity to the true class and to the other classes",
                    {"matched": sample_values(own), "unmatched": sample_values(others),
                     "threshold": threshold.threshold})],
        tables={"Per-class accuracy (worst first)": rows},
        metric_groups={"accuracy": [m for m in ("top1", "top5", "balanced_accuracy", "mean_rank")
                                    if m in metrics],
                       "decision threshold": ["threshold"]})


def _most_confused(matrix: np.ndarray, c: int, names: Sequence[str]) -> str:
    row = matrix[c].copy()
    row[c] = -1
    other = int(np.argmax(row))
    return f"{names[other]} ({row[other]:.0f})" if row[other] > 0 else ""
