"""Image-text retrieval in both directions, with several captions per image.

text->image: each caption is a query, the images of its group are correct.
image->text: each image is a query, any caption of its group is correct (R@K as in the
CLIP paper); `i2t_true_r{K}` is the fraction of its captions in the top K.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from polymodal.data.records import PairSet
from polymodal.errors import DataError
from polymodal.eval.embed import Progress, embed_pair_set
from polymodal.eval.metrics import Ranking, suggest_threshold
from polymodal.eval.report import Evaluation, Plot, sample_values
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageTransform

KS = (1, 5, 10)
CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100)
PRIMARY_METRIC = "mean_recall"  # mean of R@1/5/10 in both directions (higher is better)
DIRECTIONS = ("t2i", "i2t")
# metric -> whether higher is better (ranks are better low)
GREATER_IS_BETTER = {
    **{f"{d}_r{k}": True for d in DIRECTIONS for k in KS},
    **{f"i2t_true_r{k}": True for k in KS},
    **{f"{d}_{m}": True for d in DIRECTIONS for m in ("map", "mrr", "ndcg10")},
    **{f"{d}_{m}": False for d in DIRECTIONS for m in ("median_rank", "mean_rank")},
    PRIMARY_METRIC: True,
}
METRIC_NAMES = tuple(GREATER_IS_BETTER)


def oriented(metric: str, value: float) -> float:
    """`value` turned so that higher is better (ranks are negated), for model selection."""
    return value if GREATER_IS_BETTER[metric] else -value


def _rankings(image_embeds: np.ndarray, text_embeds: np.ndarray, image_groups: np.ndarray,
              text_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Ranking]]:
    scores = text_embeds @ image_embeds.T  # (M, N)
    positives = text_groups[:, None] == image_groups[None, :]
    return scores, positives, {"t2i": Ranking(scores, positives), "i2t": Ranking(scores.T, positives.T)}


def retrieval_metrics(image_embeds: np.ndarray, text_embeds: np.ndarray, image_groups: np.ndarray,
                      text_groups: np.ndarray) -> dict[str, float]:
    """image_embeds (N, E) and text_embeds (M, E), L2-normalised; groups say which
    captions belong to which images. Recalls, mAP, MRR and nDCG are percentages."""
    _, _, rankings = _rankings(image_embeds, text_embeds, image_groups, text_groups)
    return _metrics(rankings)


def _metrics(rankings: dict[str, Ranking]) -> dict[str, float]:
    results: dict[str, float] = {}
    for direction, ranking in rankings.items():
        for k in KS:
            results[f"{direction}_r{k}"] = 100.0 * float(ranking.recall_at(k).mean())
        ranks = ranking.first_positive_rank()
        results[f"{direction}_median_rank"] = float(np.median(ranks))
        results[f"{direction}_mean_rank"] = float(np.mean(ranks))
        results[f"{direction}_map"] = 100.0 * float(ranking.average_precision().mean())
        results[f"{direction}_mrr"] = 100.0 * float(ranking.reciprocal_rank().mean())
        results[f"{direction}_ndcg10"] = 100.0 * float(ranking.ndcg_at(10).mean())
    for k in KS:
        results[f"i2t_true_r{k}"] = 100.0 * float(rankings["i2t"].true_recall_at(k).mean())
    results[PRIMARY_METRIC] = float(np.mean([results[f"{d}_r{k}"] for d in DIRECTIONS for k in KS]))
    return results


def evaluate_retrieval(model: DualEncoder, tokenizer: Tokenizer, transform: ImageTransform, pairs: PairSet,
                       batch_size: int = 128, num_workers: int = 0, dtype: torch.dtype | None = None,
                       progress: Progress | None = None) -> Evaluation:
    """Embed `pairs`, rank both ways, and collect metrics, recall curves and the
    matched/unmatched similarity distributions with a suggested decision threshold."""
    start = time.perf_counter()
    embedded = embed_pair_set(model, tokenizer, pairs, transform, batch_size, num_workers, dtype,
                              progress=progress)
    scores, positives, rankings = _rankings(embedded.image_embeds, embedded.text_embeds, embedded.image_groups,
                                            embedded.text_groups)
    metrics = _metrics(rankings)
    matched, unmatched = scores[positives], scores[~positives]
    if not unmatched.size:
        raise DataError(f"{pairs.name}: retrieval needs at least two images of different groups")
    threshold = suggest_threshold(matched, unmatched)
    metrics["threshold"] = threshold.threshold
    metrics["threshold_tpr"] = 100.0 * threshold.true_positive_rate
    metrics["threshold_fpr"] = 100.0 * threshold.false_positive_rate
    curve_ks = [k for k in CURVE_KS if k <= max(scores.shape)]
    curves = {d: [100.0 * float(rankings[d].recall_at(k).mean()) if k <= rankings[d].num_items else 100.0
                  for k in curve_ks] for d in DIRECTIONS}
    plots = [
        Plot("recall_curve", "Recall@K", {"ks": curve_ks, "curves": {"text → image": curves["t2i"],
                                                                       "image → text": curves["i2t"]}}),
        Plot("similarity_histogram", "Similarity of matched and unmatched pairs",
             {"matched": sample_values(matched), "unmatched": sample_values(unmatched),
              "threshold": threshold.threshold}),
    ]
    return Evaluation(
        task="retrieval", metrics=metrics, primary_metric=PRIMARY_METRIC,
        info={"images": len(embedded.image_keys), "texts": len(embedded.texts), "data": pairs.name,
              "seconds": round(time.perf_counter() - start, 1)},
        skipped=embedded.skipped + sorted(pairs.dropped.items()), plots=plots,
        metric_groups=_metric_groups())


def _metric_groups() -> dict[str, list[str]]:
    """How the report lays out the metrics: one table row per direction."""
    return {
        "text → image": [f"t2i_r{k}" for k in KS] + ["t2i_median_rank", "t2i_mean_rank", "t2i_map", "t2i_mrr",
                                                    "t2i_ndcg10"],
        "image → text": [f"i2t_r{k}" for k in KS] + ["i2t_median_rank", "i2t_mean_rank", "i2t_map", "i2t_mrr",
                                                    "i2t_ndcg10"],
        "image → text, true recall": [f"i2t_true_r{k}" for k in KS],
        "decision threshold": ["threshold", "threshold_tpr", "threshold_fpr"],
        "summary": [PRIMARY_METRIC],
    }
