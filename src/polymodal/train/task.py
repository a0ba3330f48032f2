"""The training task: a dual encoder, its objective, and how captions reach the text
tower (tokenised each step, or as cached features of a frozen backbone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.inference import TextFeatureCache, model_device
from polymodal.losses import ClipLoss, ImageTextLoss, SigLipLoss, TripletLoss, VSEppLoss
from polymodal.models.dual_encoder import DualEncoder, DualEncoderOutput
from polymodal.tokenizer import Tokenizer
from polymodal.train.config import LossSection


def build_loss(cfg: LossSection) -> ImageTextLoss:
    losses: dict[str, ImageTextLoss] = {
        "clip": ClipLoss(),
        "siglip": SigLipLoss(),
        "triplet": TripletLoss(cfg.margin, cfg.mining, cfg.distance),
        "vsepp": VSEppLoss(cfg.margin, cfg.hardest),
    }
    return losses[cfg.kind]


class ContrastiveTask(nn.Module):
    """forward(pixels, caption_ids) -> DualEncoderOutput for a batch of the training set.

    `captions` is the training set's caption table (caption id -> text). With a
    `text_cache`, the text backbone is not run at all: its cached features go through
    the trainable projection head.
    """

    def __init__(self, model: DualEncoder, tokenizer: Tokenizer, captions: Sequence[str],
                 text_cache: TextFeatureCache | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.captions = list(captions)
        self.text_cache = text_cache

    def forward(self, pixels: Tensor, caption_ids: Tensor) -> DualEncoderOutput:
        image = self.model.encode_image(pixels.to(model_device(self.model), non_blocking=True))
        return self.output(image, self.encode_captions(caption_ids))

    def encode_captions(self, caption_ids: Tensor) -> Tensor:
        """(B, E) normalised embeddings of training captions, by caption id."""
        if self.text_cache is not None:
            return F.normalize(self.model.text.forward_head(self.text_cache.lookup(caption_ids)), dim=-1)
        tokens = self.tokenizer([self.captions[i] for i in caption_ids.tolist()]).to(model_device(self.model))
        return self.model.encode_text(tokens.input_ids, tokens.attention_mask)

    def output(self, image_embeds: Tensor, text_embeds: Tensor) -> DualEncoderOutput:
        scale, bias = self.model.logit_params()
        return DualEncoderOutput(image_embeds=image_embeds, text_embeds=text_embeds, logit_scale=scale,
                                 logit_bias=bias)
