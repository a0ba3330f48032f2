"""Image towers: a Vision Transformer (CLIP's layout) and a small ResNet.

Both take (B, 3, S, S) normalised images, where S is the config's image_size, and
return `TowerFeatures` whose tokens are patches (ViT, with the class token first) or
cells of the last feature map (ResNet).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.config import ResNetConfig, ViTConfig
from polymodal.models.layers import (
    LearnedPositionalEmbedding,
    LearnedPositionalEmbedding2D,
    SinCos2DPositionalEmbedding,
    Transformer,
)
from polymodal.models.tower import LayerGroup, Tower, TowerFeatures, build_projection


def _check_image(x: Tensor, size: int) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
        raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(x.shape)}")


# --------------------------------------------------------------------------- ViT


class VisionTransformer(Tower):
    """ViT: patchify with a strided convolution, add positions, transformer, pool.

    Layout follows CLIP: [class token; patches] + positions -> LayerNorm (ln_pre) ->
    blocks -> LayerNorm -> pool (class token or mean of patches) -> projection.
    """

    def __init__(self, cfg: ViTConfig, output_dim: int) -> None:
        super().__init__()
        width = cfg.transformer.width
        self.cfg = cfg
        self.width, self.output_dim = width, output_dim
        self.patch_embed = nn.Conv2d(3, width, cfg.patch_size, cfg.patch_size,
                                     bias=cfg.patch_bias)
        scale = width**-0.5  # CLIP's init scale for the class token and positions
        self.cls_token = nn.Parameter(scale * torch.randn(1, 1, width)) if cfg.pool == "cls" else None
        n_patches = cfg.grid_size**2
        self.pos_embed: nn.Module
        if cfg.pos_embed == "learned":
            n_tokens = n_patches + (self.cls_token is not None)
            self.pos_embed = LearnedPositionalEmbedding(n_tokens, width, std=scale)
        elif cfg.pos_embed == "learned_2d":
            self.pos_embed = LearnedPositionalEmbedding2D(cfg.grid_size, width, std=scale)
        else:
            self.pos_embed = SinCos2DPositionalEmbedding(cfg.grid_size, width)
        eps = cfg.transformer.norm_eps
        self.norm_pre = nn.LayerNorm(width, eps=eps) if cfg.pre_norm else nn.Identity()
        self.transformer = Transformer(cfg.transformer)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.head = build_projection(cfg.proj, width, output_dim, cfg.proj_bias)
        self.transformer.init_weights()

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> TowerFeatures:
        x = self.transformer(self._embed(x))
        x = self.norm(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return TowerFeatures(tokens=x, mask=None, pooled=pooled)

    def pooled_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.cls_token is None or not self.transformer.supports_forward_at():
            return super().pooled_features(x, mask)  # mean pooling reads every token
        tokens = self._embed(x)
        first = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return self.norm(self.transformer.forward_at(tokens, first))  # the class token

    def _embed(self, x: Tensor) -> Tensor:
        """Images -> the transformer's input tokens (B, 1 + G*G, W)."""
        _check_image(x, self.cfg.image_size)
        x = self.patch_embed(x.to(self.patch_embed.weight.dtype))  # (B, W, G, G)
        x = x.flatten(2).transpose(1, 2)  # (B, G*G, W), row-major patches
        if self.cfg.pos_embed == "learned":  # positions cover the class token too (CLIP)
            x = self._prepend_cls(x)
            x = x + self.pos_embed(x.shape[1])
        else:  # 2-D positions describe patches; the class token has none
            x = self._prepend_cls(x + self.pos_embed(x.shape[1]))
        return self.norm_pre(x)

    def _prepend_cls(self, x: Tensor) -> Tensor:
        if self.cls_token is None:
            return x
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)

    def layer_groups(self) -> list[LayerGroup]:
        stem: LayerGroup = [self.patch_embed, self.pos_embed, self.norm_pre]
        if self.cls_token is not None:
            stem.append(self.cls_token)
        blocks: list[LayerGroup] = [[b] for b in self.transformer.blocks]
        blocks[-1].append(self.norm)
        return [stem, *blocks]


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.GroupNorm(groups, out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNetTower(Tower):
    """A small ResNet of basic blocks; tokens are the cells of the last feature map.

    GroupNorm instead of BatchNorm: contrastive batches are re-embedded in chunks
    (gradient caching) and towers get locked, and batch statistics would make either
    change the embeddings.
    """

    def __init__(self, cfg: ResNetConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.width, self.output_dim = cfg.widths[-1], output_dim
        w0, g = cfg.widths[0], cfg.norm_groups
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 2, 1, bias=False),
                                  nn.GroupNorm(g, w0), nn.ReLU(inplace=True))
        stages, in_ch = [], w0
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            blocks = [BasicBlock(in_ch if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1, g)
                      for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(self.width)
        self.head = build_projection(cfg.proj, self.width, output_dim, cfg.proj_bias)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> TowerFeatures:
        _check_image(x, self.cfg.image_size)
        x = self.stem(x.to(self.norm.weight.dtype))
        for stage in self.stages:
            x = stage(x)  # (B, C, h, w)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, h*w, C)
        return TowerFeatures(tokens=tokens, mask=None, pooled=tokens.mean(dim=1))

    def layer_groups(self) -> list[LayerGroup]:
        groups: list[LayerGroup] = [[self.stem]]
        groups += [[stage] for stage in self.stages]
        groups[-1].append(self.norm)
        return groups
