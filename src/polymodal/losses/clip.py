"""CLIP's contrastive loss (InfoNCE over the image-text similarity matrix)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from polymodal.losses.base import ImageTextLoss, positive_mask


class ClipLoss(ImageTextLoss):
    """Symmetric cross-entropy over logits = scale * image @ text.T.

    Inputs: L2-normalised image and text embeddings (B, E), the learned scale
    exp(t) (CLIP clamps it at 100), optional group ids. Each image must pick its
    caption among the B captions of the batch and each caption its image; with group
    ids, the target is spread evenly over all positives of a row (soft targets), so
    duplicates in a batch are not pushed apart.

    When to use: the default for image-text training with large batches; the batch
    is the pool of negatives, so bigger is better (gather across processes, or use
    gradient caching).

    Reference: Radford et al. 2021, "Learning Transferable Visual Models From Natural
    Language Supervision" (Fig. 3 pseudo-code); van den Oord et al. 2018 (InfoNCE).

    Example:
        loss = ClipLoss()(model(images=x, input_ids=ids, attention_mask=mask))
    """

    def compute_loss_from_embeddings(self, image: Tensor, text: Tensor, logit_scale: Tensor,
                                     logit_bias: Tensor | None = None,
                                     group_ids: Tensor | None = None) -> Tensor:
        logits = logit_scale * image @ text.T  # (B, B): row i = image i against every text
        positives = positive_mask(group_ids, len(image), image.device).float()
        if group_ids is None:
            target = positives.argmax(dim=1)  # the diagonal, as class indices
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        # Soft targets; the mask is symmetric, so the same targets serve both directions.
        target = positives / positives.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
