"""The interface of every image-text objective.

A loss sees embeddings, never models: `compute_loss_from_embeddings(image, text, ...)`
holds the math, and `forward(output, group_ids)` adds what training needs around it:
gathering the global batch across processes (see distributed.py).

`group_ids` (B,) marks pairs that belong together: rows with the same id are positives
for each other (two captions of one image, two images of one class). Without it, only
the diagonal is positive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from polymodal.losses.distributed import gather_batch
from polymodal.models.dual_encoder import DualEncoderOutput


def positive_mask(group_ids: Tensor | None, n: int, device: torch.device) -> Tensor:
    """(B, B) bool: True where row i and column j share a group (diagonal included)."""
    if group_ids is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    group_ids = group_ids.to(device)
    return group_ids[:, None] == group_ids[None, :]


class ImageTextLoss(nn.Module, ABC):
    """Base class: subclasses implement `compute_loss_from_embeddings`."""

    #: whether the objective uses DualEncoderOutput.logit_bias (SigLIP)
    needs_bias: bool = False

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather  # under torch.distributed, see the global batch

    def forward(self, output: DualEncoderOutput, group_ids: Tensor | None = None) -> Tensor:
        if output.image_embeds is None or output.text_embeds is None:
            raise ValueError("an image-text loss needs both image and text embeddings")
        image, text = output.image_embeds, output.text_embeds
        if group_ids is not None:
            group_ids = group_ids.to(image.device)  # NCCL gathers device tensors only
        if self.gather:
            image, text, group_ids = gather_batch(image, text, group_ids)
        # Losses are computed in float32 even when the towers ran under bf16 autocast.
        scale = output.logit_scale.float()
        bias = output.logit_bias.float() if output.logit_bias is not None else None
        return self.compute_loss_from_embeddings(image.float(), text.float(), scale, bias, group_ids)

    @abstractmethod
    def compute_loss_from_embeddings(self, image: Tensor, text: Tensor, logit_scale: Tensor,
                                     logit_bias: Tensor | None = None,
                                     group_ids: Tensor | None = None) -> Tensor:
        """Scalar loss of L2-normalised (B, E) image and text embeddings."""
