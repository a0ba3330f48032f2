"""Margin-based ranking losses: triplet (with mining) and VSE++."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from polymodal.losses.base import ImageTextLoss, positive_mask

Mining = Literal["all", "hard", "semi-hard"]
Distance = Literal["cosine", "euclidean"]


def pairwise_distance(image: Tensor, text: Tensor, distance: Distance) -> Tensor:
    """(B, B) distances between every image and every text."""
    if distance == "cosine":
        return 1 - image @ text.T
    # clamp: sqrt'(0) is infinite, and a pair can be exactly equal.
    return torch.cdist(image, text).clamp(min=1e-12)


class TripletLoss(ImageTextLoss):
    """Triplet loss with margin, in both directions (image anchors against texts, and
    text anchors against images):

        l(a, p, n) = max(0, d(a, p) - d(a, n) + margin)

    Mining chooses the negatives of each (anchor, positive) pair:
      - all: every negative; the mean is taken over the triplets that still violate
        the margin (Hermans et al. 2017, "batch all"),
      - hard: the closest negative and the farthest positive of each anchor ("batch
        hard", Hermans et al. 2017),
      - semi-hard: the closest negative that is still farther than the positive; if
        there is none, the farthest negative (Schroff et al. 2015, FaceNet; as
        TensorFlow Addons' triplet_semihard_loss).

    Inputs: L2-normalised embeddings (B, E) and optional group ids; the logit scale is
    not used. When to use: retrieval where a fixed margin matters more than
    calibrated probabilities, and as the classic baseline to InfoNCE.
    """

    def __init__(self, margin: float = 0.2, mining: Mining = "semi-hard",
                 distance: Distance = "cosine", gather: bool = True) -> None:
        super().__init__(gather)
        if mining not in ("all", "hard", "semi-hard"):
            raise ValueError(f"unknown mining {mining!r}; choose all, hard or semi-hard")
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"unknown distance {distance!r}; choose cosine or euclidean")
        self.margin, self.mining, self.distance = margin, mining, distance

    def compute_loss_from_embeddings(self, image: Tensor, text: Tensor, logit_scale: Tensor,
                                     logit_bias: Tensor | None = None,
                                     group_ids: Tensor | None = None) -> Tensor:
        dist = pairwise_distance(image, text, self.distance)  # (B, B) image i to text j
        positive = positive_mask(group_ids, len(image), image.device)
        return (mined_triplet_loss(dist, positive, self.margin, self.mining)
                + mined_triplet_loss(dist.T, positive.T, self.margin, self.mining)) / 2


# (anchor, positive, negative) triplets held in memory at once by the all and semi-hard
# modes: anchors are processed in chunks, so a gathered batch of 4096 needs no 4096^3 tensor.
_TRIPLETS_PER_CHUNK = 1 << 24


def mined_triplet_loss(dist: Tensor, positive: Tensor, margin: float, mining: Mining) -> Tensor:
    """Triplet loss of one direction. `dist` (A, C): anchors (rows) to candidates; the
    candidates in `positive` (A, C) are the anchor's positives, the others negatives."""
    negative = ~positive
    if mining == "hard":
        hardest_pos = dist.masked_fill(negative, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(positive, float("inf")).amin(dim=1)
        valid = negative.any(dim=1)
        losses = (hardest_pos - hardest_neg + margin).clamp(min=0)
        return losses[valid].mean() if valid.any() else dist.sum() * 0
    total, count = dist.new_zeros(()), dist.new_zeros(())
    rows = max(1, _TRIPLETS_PER_CHUNK // max(1, dist.shape[1] ** 2))
    for start in range(0, dist.shape[0], rows):
        d, pos, neg = dist[start:start + rows], positive[start:start + rows], negative[start:start + rows]
        d_ap = d[:, :, None]  # anchor to the candidate used as positive
        d_an = d[:, None, :]  # anchor to the candidate used as negative
        triplet = pos[:, :, None] & neg[:, None, :]  # (a, p, n)
        if mining == "all":  # mean over the triplets that still violate the margin
            losses = (d_ap - d_an + margin).clamp(min=0) * triplet
            total, count = total + losses.sum(), count + (losses > 0).sum()
            continue
        # semi-hard: per (anchor, positive), the closest negative farther than the positive,
        # else the farthest negative.
        farther = triplet & (d_an > d_ap)
        semi_hard = d_an.expand_as(triplet).masked_fill(~farther, float("inf")).amin(dim=2)
        easiest = d.masked_fill(pos, float("-inf")).amax(dim=1, keepdim=True)
        chosen = torch.where(farther.any(dim=2), semi_hard, easiest.expand_as(semi_hard))
        pairs = pos & neg.any(dim=1, keepdim=True)  # (anchor, positive) pairs with a negative
        total = total + (d - chosen + margin).clamp(min=0)[pairs].sum()
        count = count + pairs.sum()
    return total / count.clamp(min=1)


class VSEppLoss(ImageTextLoss):
    """Max-margin ranking loss on cosine similarity, in both directions:

        l = sum over positives (i, i) of  [m - s(i, i) + s(i, j')]_+ + [m - s(i, i) + s(j'', i)]_+

    where j' and j'' are the hardest negative text and image (VSE++, Faghri et al.
    2018). With `hardest=False` it sums over all negatives instead, the hinge rank loss
    of DeViSE (Frome et al. 2013) and WSABIE (Weston et al. 2011). Averaged over the
    anchors (the papers sum; the mean keeps the scale independent of batch size).

    Inputs: L2-normalised embeddings (B, E), optional group ids (positives other than
    the diagonal are neither anchors' negatives nor counted). When to use: small
    batches where the hardest negative carries the signal; the reference baseline of
    the image-text retrieval literature before CLIP.
    """

    def __init__(self, margin: float = 0.2, hardest: bool = True, gather: bool = True) -> None:
        super().__init__(gather)
        self.margin, self.hardest = margin, hardest

    def compute_loss_from_embeddings(self, image: Tensor, text: Tensor, logit_scale: Tensor,
                                     logit_bias: Tensor | None = None,
                                     group_ids: Tensor | None = None) -> Tensor:
        sim = image @ text.T  # (B, B)
        positive = positive_mask(group_ids, len(image), image.device)
        diagonal = sim.diagonal()[:, None]  # each anchor's own pair
        cost_text = (self.margin - diagonal + sim).clamp(min=0).masked_fill(positive, 0)
        cost_image = (self.margin - diagonal + sim.T).clamp(min=0).masked_fill(positive, 0)
        if self.hardest:
            return (cost_text.amax(dim=1) + cost_image.amax(dim=1)).mean()
        return (cost_text.sum(dim=1) + cost_image.sum(dim=1)).mean()
