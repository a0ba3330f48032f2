"""Linear probe: multinomial logistic regression on frozen image embeddings (as in the
CLIP paper's representation-learning evaluation), on all training images and few-shot.

The L2 penalty is chosen on a stratified quarter of the training images, then the
probe is refit on all of them. Few-shot probes draw k images per class with several
seeds and reuse that penalty (k images per class leave nothing to validate on).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.data.records import PairSet
from polymodal.errors import DataError
from polymodal.eval.embed import Progress, embed_images
from polymodal.eval.metrics import balanced_accuracy, top_k_accuracy
from polymodal.eval.report import Evaluation, Plot
from polymodal.inference import model_device
from polymodal.models.dual_encoder import DualEncoder
from polymodal.transforms import ImageTransform

PRIMARY_METRIC = "top1"
PENALTIES = tuple(10.0 ** e for e in range(-6, 1))  # L2 weights searched, per sample


Weights = tuple[np.ndarray, np.ndarray]  # (D, C) weight and (C,) bias


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, penalty: float,
                            max_iter: int = 300, init: Weights | None = None,
                            device: torch.device | str = "cpu") -> Weights:
    """Weights (D, C) and bias (C,) minimising mean cross-entropy + penalty * |W|^2
    (full-batch L-BFGS in float32; the problem is convex, so the result does not depend
    on a seed). `init` warm-starts from a nearby solution, e.g. along a penalty path.
    Classes without training samples get a bias of -inf: they are never predicted, and
    the fit does not chase their bias towards -infinity for max_iter steps."""
    present = np.zeros(num_classes, dtype=bool)
    present[np.unique(labels)] = True
    index = np.cumsum(present) - 1  # class -> column among present classes
    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    y = torch.as_tensor(index[labels], dtype=torch.long, device=device)
    start_w = init[0][:, present] if init is not None else np.zeros((x.shape[1], int(present.sum())))
    start_b = init[1][present] if init is not None else np.zeros(int(present.sum()))
    weight = torch.tensor(np.ascontiguousarray(start_w), dtype=torch.float32, device=device, requires_grad=True)
    bias = torch.tensor(np.nan_to_num(start_b, neginf=0.0), dtype=torch.float32, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    full_w = np.zeros((x.shape[1], num_classes), dtype=np.float32)
    full_b = np.full(num_classes, -np.inf, dtype=np.float32)
    full_w[:, present] = weight.detach().cpu().numpy()
    full_b[present] = bias.detach().cpu().numpy()
    return full_w, full_b


class Standardizer:
    """Per-dimension z-scores with the training set's statistics, so that one grid of
    penalties suits every model's embedding scale."""

    def __init__(self, features: np.ndarray) -> None:
        self.mean = features.mean(axis=0)
        self.std = features.std(axis=0) + 1e-8

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std


def select_penalty(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0,
                   penalties: Sequence[float] = PENALTIES, device: torch.device | str = "cpu") -> float:
    """The penalty with the best accuracy on a stratified held-out quarter (ties: the
    larger). The path runs from strong to weak penalties, each fit warm-started from the
    previous one and capped at 100 steps: a search needs the ranking, not the optimum."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        held[members[:len(members) // 4]] = True
    if not held.any() or held.all():
        return float(penalties[len(penalties) // 2])
    fit, val = ~held, held
    scale = Standardizer(features[fit])
    best, best_accuracy = penalties[0], -1.0
    weights: Weights | None = None
    for penalty in sorted(penalties, reverse=True):
        weights = fit_logistic_regression(scale(features[fit]), labels[fit], num_classes, penalty, max_iter=100,
                                          init=weights, device=device)
        accuracy = top_k_accuracy(scale(features[val]) @ weights[0] + weights[1], labels[val], 1)
        if accuracy > best_accuracy:
            best, best_accuracy = penalty, accuracy
    return float(best)


def probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
                 penalty: float, device: torch.device | str = "cpu") -> np.ndarray:
    scale = Standardizer(train_x)
    weight, bias = fit_logistic_regression(scale(train_x), train_y, num_classes, penalty, device=device)
    return scale(test_x) @ weight + bias


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` training images of every class (fewer if a class has fewer)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)])


def evaluate_linear_probe(model: DualEncoder, transform: ImageTransform, train: PairSet, test: PairSet,
                          shots: Sequence[int] = (), repeats: int = 3, batch_size: int = 128, num_workers: int = 0,
                          dtype: torch.dtype | None = None, progress: Progress | None = None) -> Evaluation:
    """Test images are matched to training classes by class name, so a test set may lack
    some classes; a test class unknown to the training set is an error."""
    if not train.class_names or not test.class_names:
        raise DataError("a linear probe needs labelled images (class folders or a classes table) for both "
                        "training and testing")
    unknown = sorted(set(test.class_names) - set(train.class_names))
    if unknown:
        raise DataError(f"the test data has classes the training data lacks: {unknown[:10]}")
    start = time.perf_counter()
    num_classes = len(train.class_names)
    if test.class_names != train.class_names and len(set(train.class_names)) < len(train.class_names):
        raise DataError("the training data has repeated class names, so test classes cannot be matched by name")
    to_train_class = np.array([train.class_names.index(name) for name in test.class_names]) \
        if test.class_names != train.class_names else np.arange(num_classes)
    device = model_device(model)
    train_images, test_images = (embed_images(model, [r.image for r in s.records], transform, batch_size,
                                              num_workers, dtype, progress) for s in (train, test))
    train_x, test_x = train_images.embeds, test_images.embeds
    train_y = np.array([train.records[i].group for i in train_images.kept])
    test_y = to_train_class[[test.records[i].group for i in test_images.kept]]
    penalty = select_penalty(train_x, train_y, num_classes, device=device)
    scores = probe_scores(train_x, train_y, test_x, num_classes, penalty, device)
    metrics = {"top1": 100.0 * top_k_accuracy(scores, test_y, 1)}
    if num_classes >= 5:
        metrics["top5"] = 100.0 * top_k_accuracy(scores, test_y, 5)
    metrics["balanced_accuracy"] = 100.0 * balanced_accuracy(scores, test_y)
    curve: dict[str, list[float]] = {"shots": [], "mean": [], "std": []}
    for k in shots:
        accuracies = []
        for seed in range(repeats):
            chosen = few_shot_indices(train_y, k, seed)
            # The loss is a mean over samples, so the same penalty would regularise a
            # k-shot fit n_full / n_k times less than the full one: keep the balance.
            scaled = penalty * len(train_y) / len(chosen)
            accuracies.append(100.0 * top_k_accuracy(
                probe_scores(train_x[chosen], train_y[chosen], test_x, num_classes, scaled, device), test_y, 1))
        metrics[f"top1_{k}shot"] = float(np.mean(accuracies))
        metrics[f"top1_{k}shot_std"] = float(np.std(accuracies))
        for key, value in (("shots", k), ("mean", np.mean(accuracies)), ("std", np.std(accuracies))):
            curve[key].append(float(value))
    plots = [Plot("few_shot", "Linear probe accuracy by training images per class",
                  {**curve, "full": metrics["top1"]})] if shots else []
    return Evaluation(
        task="linear-probe", metrics=metrics, primary_metric=PRIMARY_METRIC,
        info={"train": train.name, "test": test.name, "train_images": len(train_y), "test_images": len(test_y),
              "classes": num_classes, "penalty": penalty, "repeats": repeats,
              "seconds": round(time.perf_counter() - start, 1)},
        skipped=train_images.skipped + test_images.skipped, plots=plots)


def split_by_hash(data: PairSet, test_fraction: float = 0.2) -> tuple[PairSet, PairSet]:
    """A fixed train/test split of one labelled set (by a hash of each image's key), for
    users with a single folder."""
    def is_test(key: str) -> bool:
        return zlib.crc32(key.encode()) % 1000 < test_fraction * 1000

    parts = []
    for test in (False, True):
        records = [r for r in data.records if is_test(r.key or r.image.name) == test]
        parts.append(PairSet(records, f"{data.name} ({'test' if test else 'train'} {test_fraction:.0%} split)"
                             if test else f"{data.name} (train split)", class_names=data.class_names,
                             class_synonyms=data.class_synonyms))
    if not parts[0].records or not parts[1].records:
        raise DataError(f"{data.name}: too few images to split into training and test parts")
    return parts[0], parts[1]
