"""DualEncoder: an image tower and a text tower projecting into one space (CLIP,
Radford et al. 2021), with a learned temperature and an optional SigLIP bias.

    model = DualEncoder(config)
    out = model(images=pixels, input_ids=ids, attention_mask=mask)  # DualEncoderOutput
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.T
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.config import (
    DualEncoderConfig,
    HFTextConfig,
    ResNetConfig,
    TextTransformerConfig,
    ViTConfig,
)
from polymodal.models.text import HFTextTower, TextTransformer
from polymodal.models.tower import Tower
from polymodal.models.vision import ResNetTower, VisionTransformer

# tower config class -> tower class. A new tower is one more entry here.
TOWERS: dict[type, Callable[[Any, int], Tower]] = {
    ViTConfig: VisionTransformer,
    ResNetConfig: ResNetTower,
    TextTransformerConfig: TextTransformer,
    HFTextConfig: HFTextTower,
}


def build_tower(cfg: Any, output_dim: int) -> Tower:
    return TOWERS[type(cfg)](cfg, output_dim)


def resolve_config(cfg: DualEncoderConfig) -> DualEncoderConfig:
    """Fill in what a config leaves to its pretrained source (an HF tower's architecture),
    so that the resolved config alone rebuilds the model."""
    if isinstance(cfg.text, HFTextConfig):
        cfg = dataclasses.replace(cfg, text=HFTextTower.resolve_config(cfg.text))
    return cfg


@dataclass
class DualEncoderOutput:
    """What `DualEncoder.forward` returns, whichever inputs and options were given.

    Embeddings are L2-normalised; a field is None when its input was not given.
    `logit_scale` is exp(learned log-scale), clamped as in CLIP.
    """

    image_embeds: Tensor | None  # (B, E)
    text_embeds: Tensor | None  # (B, E)
    logit_scale: Tensor  # scalar
    logit_bias: Tensor | None  # scalar, SigLIP only


class DualEncoder(nn.Module):
    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = resolve_config(config)
        self.visual = build_tower(self.config.vision, self.config.embed_dim)
        self.text = build_tower(self.config.text, self.config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(self.config.init_logit_scale))
        bias = self.config.init_logit_bias
        self.logit_bias = nn.Parameter(torch.tensor(bias)) if bias is not None else None

    # ---------------------------------------------------------------- encoding

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """(B, 3, S, S) preprocessed images -> (B, E) embeddings."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = True
    ) -> Tensor:
        """(B, L) token ids (+ mask, 1 = real token) -> (B, E) embeddings."""
        features = self.text(input_ids, attention_mask)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        images: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> DualEncoderOutput:
        if images is None and input_ids is None:
            raise ValueError("give images, input_ids, or both")
        scale, bias = self.logit_params()
        return DualEncoderOutput(
            image_embeds=self.encode_image(images) if images is not None else None,
            text_embeds=self.encode_text(input_ids, attention_mask) if input_ids is not None else None,
            logit_scale=scale,
            logit_bias=bias,
        )

    def logit_params(self) -> tuple[Tensor, Tensor | None]:
        """exp(learned log-scale), clamped at CLIP's 100, and the SigLIP bias (or None)."""
        return self.logit_scale.clamp(max=self.config.max_logit_scale).exp(), self.logit_bias

    # ---------------------------------------------------------------- training helpers

    def lock_image_tower(self, unlocked_groups: int = 0) -> None:
        """Freeze the image backbone but its last `unlocked_groups` blocks (LiT)."""
        self.visual.lock(unlocked_groups)

    def lock_text_tower(self, unlocked_groups: int = 0) -> None:
        """Freeze the text backbone but its last `unlocked_groups` blocks (LiT)."""
        self.text.lock(unlocked_groups)

    def load_pretrained_towers(self) -> list[str]:
        """Load the pretrained weights each tower's config names; returns the towers loaded."""
        return [name for name, tower in (("visual", self.visual), ("text", self.text))
                if tower.load_pretrained()]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass instead of storing them."""
        self.visual.set_grad_checkpointing(enabled)
        self.text.set_grad_checkpointing(enabled)
