"""The interface every tower (image, text, later audio and layout) implements.

    features = tower.forward_features(x, mask)   # TowerFeatures: tokens, mask, pooled
    embedding = tower.forward_head(features.pooled)
    embedding = tower(x, mask)                   # the two above, skipping work the
                                                 # pooled vector does not need

Fusion and captioning models read `features.tokens`; the dual encoder reads the
projected `pooled` vector. `layer_groups()` orders the backbone from input to output
so that `lock(unlocked_groups=N)` can freeze all but the last N groups (LiT).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.models.layers import Transformer
from polymodal.models.linear import Linear

LayerGroup = list[nn.Module | nn.Parameter]


@dataclass
class TowerFeatures:
    tokens: Tensor  # (B, N, W) final-normalised token features
    mask: Tensor | None  # (B, N) True for real tokens, None when all are real
    pooled: Tensor  # (B, W) the pooled representation, before the projection head


class Tower(nn.Module, ABC):
    """Base class: subclasses set `width`, `output_dim`, `head` and implement
    `forward_features` and `layer_groups`."""

    width: int
    output_dim: int
    head: nn.Module

    @abstractmethod
    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> TowerFeatures:
        """Token features, their mask and the pooled vector for inputs `x`."""

    @abstractmethod
    def layer_groups(self) -> list[LayerGroup]:
        """The backbone's parameters in groups, from input to output, head excluded."""

    def pooled_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`forward_features(x, mask).pooled`, (B, W). Towers whose pooled vector needs
        less than every token's features compute only that (the transformers' last block)."""
        return self.forward_features(x, mask).pooled

    def forward_head(self, pooled: Tensor) -> Tensor:
        return self.head(pooled)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.pooled_features(x, mask))

    def load_pretrained(self) -> bool:
        """Load the pretrained weights the tower's config names; False when it names none."""
        return False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass instead of storing them."""
        for module in self.modules():
            if isinstance(module, Transformer):
                module.grad_checkpointing = enabled

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the backbone except its last `unlocked_groups` layer groups (LiT,
        Zhai et al. 2022). The projection head stays trainable: it maps the frozen
        features into the shared space and is what a locked-tower recipe trains."""
        groups = self.layer_groups()
        if not 0 <= unlocked_groups <= len(groups):
            raise ConfigError(f"unlocked_groups must be in 0..{len(groups)}, got {unlocked_groups}")
        for i, group in enumerate(groups):
            trainable = i >= len(groups) - unlocked_groups
            for item in group:
                params = [item] if isinstance(item, nn.Parameter) else item.parameters()
                for p in params:
                    p.requires_grad_(trainable)
        for p in self.head.parameters():
            p.requires_grad_(True)


def build_projection(kind: str, in_dim: int, out_dim: int, bias: bool) -> nn.Module:
    """The projection head into the shared embedding space.

    linear: CLIP. mlp: Linear-GELU-Linear (SimCLR's head), useful on a frozen tower.
    none: identity, only when the tower's width already is the embedding size.
    """
    if kind == "linear":
        head = Linear(in_dim, out_dim, bias=bias)
        nn.init.normal_(head.weight, std=in_dim**-0.5)  # CLIP's projection init
        if head.bias is not None:
            nn.init.zeros_(head.bias)
        return head
    if kind == "mlp":
        return nn.Sequential(Linear(in_dim, in_dim, bias=bias), nn.GELU(),
                             Linear(in_dim, out_dim, bias=bias))
    if kind == "none":
        if in_dim != out_dim:
            raise ConfigError(f"proj 'none' needs tower width {in_dim} == embed_dim {out_dim}")
        return nn.Identity()
    raise ConfigError(f"unknown projection {kind!r}; choose linear, mlp or none")
