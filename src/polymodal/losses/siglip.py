"""SigLIP's pairwise sigmoid loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from polymodal.losses.base import ImageTextLoss, positive_mask


class SigLipLoss(ImageTextLoss):
    """Independent binary classification of every image-text pair:

        loss = -1/B * sum_ij log sigmoid(z_ij * (scale * x_i . y_j + bias)),
        z_ij = +1 for matching pairs, -1 otherwise.

    Inputs: L2-normalised embeddings (B, E), the learned scale (SigLIP initialises
    t' = log 10) and the learned bias (initialised at -10 so that the many negatives
    start with a small loss), optional group ids marking extra positives.

    When to use: small or variable batches and many processes; no softmax over the
    batch, so its value does not depend on the batch as a whole, and it needs no
    all-to-all normalisation.

    Reference: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training"
    (Algorithm 1). Models trained with it need `init_logit_bias` set in their config.
    """

    needs_bias = True

    def compute_loss_from_embeddings(self, image: Tensor, text: Tensor, logit_scale: Tensor,
                                     logit_bias: Tensor | None = None,
                                     group_ids: Tensor | None = None) -> Tensor:
        if logit_bias is None:
            raise ValueError("SigLipLoss needs a model with a logit bias (set init_logit_bias, "
                             "e.g. -10, in the model config)")
        logits = logit_scale * image @ text.T + logit_bias  # (B, B)
        signs = positive_mask(group_ids, len(image), image.device).float() * 2 - 1
        return -F.logsigmoid(signs * logits).sum() / len(image)
