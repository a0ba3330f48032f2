"""Fusion encoders: read text tokens and image tokens together, and the heads on top.

    encoder = FusionEncoder(cfg)                      # cfg: config.FusionConfig
    out = encoder(ids, text_mask, image_tokens)       # FusionOutput
    itm = ITMHead(cfg)(out.pooled)                    # (B, 2): mismatch / match
    mlm = MLMHead(cfg, encoder.token_embed)(out.text) # (B, L, vocab)
    vqa = VQAHead(cfg)(out.pooled)                    # (B, num_answers)

Two layouts (FusionConfig.kind):
- cross (ALBEF/BLIP): the text stream runs self-attention over its own tokens, then
  cross-attention to the image tokens, in every layer. Image tokens are only read, so
  they are not updated and `out.image` is None.
- single (VisualBERT): [text; image] is one sequence with a segment embedding per
  modality and full attention both ways; `out.image` holds the image positions' states.

Padding is never attended to: text padding is masked as keys in self-attention (and in
the single stream's joint attention); image padding (`image_mask`) as keys everywhere.
`pooled` is the state of the first text token (<sot> / [CLS]), which every head reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from polymodal.config import FusionConfig, FusionModelConfig
from polymodal.models.layers import LearnedPositionalEmbedding, Transformer
from polymodal.models.tower import Tower

TEXT_SEGMENT, IMAGE_SEGMENT = 0, 1


@dataclass
class FusionOutput:
    text: Tensor  # (B, L, W) states of the text positions
    image: Tensor | None  # (B, M, W) states of the image positions (single stream only)
    pooled: Tensor  # (B, W) the first text token's state


def check_fusion_inputs(ids: Tensor, text_mask: Tensor, image_tokens: Tensor, cfg: FusionConfig) -> None:
    if ids.dim() != 2 or text_mask.shape != ids.shape:
        raise ValueError(f"token ids {tuple(ids.shape)} and mask {tuple(text_mask.shape)} must both be (B, L)")
    if ids.shape[1] > cfg.context_length:
        raise ValueError(f"{ids.shape[1]} tokens exceed the context length {cfg.context_length}")
    if image_tokens.dim() != 3 or image_tokens.shape[0] != ids.shape[0] or image_tokens.shape[2] != cfg.image_width:
        raise ValueError(f"image tokens {tuple(image_tokens.shape)} must be (B={ids.shape[0]}, M, "
                         f"{cfg.image_width})")
    if image_tokens.shape[1] > cfg.image_tokens:
        raise ValueError(f"{image_tokens.shape[1]} image tokens exceed the configured {cfg.image_tokens}")


class FusionEncoder(nn.Module):
    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.transformer.width
        self.token_embed = nn.Embedding(cfg.vocab_size, width)
        self.text_pos = LearnedPositionalEmbedding(cfg.context_length, width, std=0.02)
        # the vision tower's tokens, in its width, brought to the fusion width
        self.image_proj = nn.Sequential(nn.Linear(cfg.image_width, width), nn.LayerNorm(width))
        self.image_pos: LearnedPositionalEmbedding | None = None
        self.segment: nn.Embedding | None = None
        if cfg.kind == "single":
            self.image_pos = LearnedPositionalEmbedding(cfg.image_tokens, width, std=0.02)
            self.segment = nn.Embedding(2, width)
        self.norm_embed = nn.LayerNorm(width)
        self.transformer = Transformer(cfg.transformer, cross_attention=cfg.kind == "cross")
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.transformer.init_weights()

    def forward(self, ids: Tensor, text_mask: Tensor, image_tokens: Tensor,
                image_mask: Tensor | None = None) -> FusionOutput:
        check_fusion_inputs(ids, text_mask, image_tokens, self.cfg)
        text_mask = text_mask.bool()
        text = self.token_embed(ids) + self.text_pos(ids.shape[1])
        image = self.image_proj(image_tokens.to(text.dtype))
        if self.cfg.kind == "cross":
            states = self.transformer(self.norm_embed(text), key_mask=text_mask, context=image,
                                      context_mask=image_mask)
            text_out, image_out = self.norm(states), None
        else:
            assert self.segment is not None and self.image_pos is not None
            text = text + self.segment.weight[TEXT_SEGMENT]
            image = image + self.image_pos(image.shape[1]) + self.segment.weight[IMAGE_SEGMENT]
            if image_mask is None:
                image_mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)
            joint_mask = torch.cat([text_mask, image_mask.bool()], dim=1)
            states = self.norm(self.transformer(self.norm_embed(torch.cat([text, image], dim=1)), key_mask=joint_mask))
            text_out, image_out = states[:, : ids.shape[1]], states[:, ids.shape[1]:]
        return FusionOutput(text_out, image_out, text_out[:, 0])


class ITMHead(nn.Module):
    """Image-text matching: logits (B, 2) of mismatch and match."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.transformer.width, 2)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(pooled)


class MLMHead(nn.Module):
    """Masked language modelling: BERT's transform (Linear, GELU, LayerNorm), then logits
    over the vocabulary, with the decoder tied to the token embeddings when configured."""

    def __init__(self, cfg: FusionConfig, token_embed: nn.Embedding) -> None:
        super().__init__()
        width = cfg.transformer.width
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.decoder = nn.Linear(width, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            self.decoder.weight = token_embed.weight

    def forward(self, text_states: Tensor) -> Tensor:
        return self.decoder(self.transform(text_states))


class VQAHead(nn.Module):
    """Answer classification (as in VisualBERT and ALBEF's classifier variant): an MLP on
    the pooled state, one logit per answer in the answer vocabulary."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        if cfg.num_answers < 1:
            raise ValueError("the VQA head needs num_answers >= 1")
        width = cfg.transformer.width
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width),
                                 nn.Linear(2 * width, cfg.num_answers))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled)


class FusionModel(nn.Module):
    """A vision tower, a fusion encoder over its tokens and the heads: ITM, MLM, masked
    patch modelling (single stream only: the cross layout does not update image tokens)
    and, with `num_answers`, VQA."""

    def __init__(self, cfg: FusionConfig, vision: Tower) -> None:
        super().__init__()
        if vision.width != cfg.image_width:
            raise ValueError(f"the vision tower's width {vision.width} != image_width {cfg.image_width}")
        self.cfg = cfg
        self.model_config: FusionModelConfig | None = None  # the full config, when built from one (saving needs it)
        self.vision = vision
        self.encoder = FusionEncoder(cfg)
        self.itm = ITMHead(cfg)
        self.mlm = MLMHead(cfg, self.encoder.token_embed)
        self.mpm = nn.Linear(cfg.transformer.width, cfg.image_width) if cfg.kind == "single" else None
        self.vqa = VQAHead(cfg) if cfg.num_answers else None

    def image_tokens(self, pixels: Tensor) -> Tensor:
        return self.vision.forward_features(pixels).tokens

    def fuse(self, ids: Tensor, mask: Tensor, image_tokens: Tensor) -> FusionOutput:
        return self.encoder(ids, mask, image_tokens)

    def match_logit(self, ids: Tensor, mask: Tensor, image_tokens: Tensor) -> Tensor:
        """(B,) the ITM head's log-odds that the caption describes the image: match minus
        mismatch logit, so that sigmoid(match_logit) = P(match)."""
        logits = self.itm(self.fuse(ids, mask, image_tokens).pooled)
        return logits[:, 1] - logits[:, 0]

    def match_probability(self, ids: Tensor, mask: Tensor, image_tokens: Tensor) -> Tensor:
        """(B,) P(the caption describes the image), from the ITM head."""
        return torch.sigmoid(self.match_logit(ids, mask, image_tokens).float())

    def answer_logits(self, ids: Tensor, mask: Tensor, image_tokens: Tensor) -> Tensor:
        if self.vqa is None:
            raise ValueError("this model has no VQA head (num_answers = 0)")
        return self.vqa(self.fuse(ids, mask, image_tokens).pooled)
