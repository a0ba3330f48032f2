"""Image-text retrieval in both directions, with several captions per image.

text->image: each caption is a query, the images of its group are correct.
image->text: each image is a query, any caption of its group is correct.
"""

from __future__ import annotations

import numpy as np

from polymodal.eval.metrics import first_positive_rank, recall_at_k

KS = (1, 5, 10)
PRIMARY_METRIC = "mean_recall"  # mean of R@1/5/10 in both directions (higher is better)
# metric -> whether higher is better (ranks are better low)
GREATER_IS_BETTER = {**{f"{d}_r{k}": True for d in ("t2i", "i2t") for k in KS},
                     "t2i_median_rank": False, "i2t_median_rank": False, PRIMARY_METRIC: True}
METRIC_NAMES = tuple(GREATER_IS_BETTER)


def oriented(metric: str, value: float) -> float:
    """`value` turned so that higher is better (ranks are negated), for model selection."""
    return value if GREATER_IS_BETTER[metric] else -value


def retrieval_metrics(image_embeds: np.ndarray, text_embeds: np.ndarray, image_groups: np.ndarray,
                      text_groups: np.ndarray) -> dict[str, float]:
    """image_embeds (N, E) and text_embeds (M, E), L2-normalised; groups say which
    captions belong to which images. Recalls are percentages."""
    scores = text_embeds @ image_embeds.T  # (M, N)
    positives = text_groups[:, None] == image_groups[None, :]
    results: dict[str, float] = {}
    for direction, s, p in (("t2i", scores, positives), ("i2t", scores.T, positives.T)):
        for k in KS:
            results[f"{direction}_r{k}"] = 100.0 * recall_at_k(s, p, k)
        results[f"{direction}_median_rank"] = float(np.median(first_positive_rank(s, p)))
    results[PRIMARY_METRIC] = float(np.mean([results[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in KS]))
    return results
