"""Text towers: a transformer trained from scratch (CLIP's text tower) and a pretrained
Hugging Face encoder (default all-MiniLM-L6-v2) with mean pooling.

Both take token ids (B, L) and an attention mask (B, L), 1 for real tokens, as made by
`polymodal.tokenizer.Tokenizer`; padding is on the right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from polymodal.config import HFTextConfig, TextTransformerConfig
from polymodal.errors import CheckpointError, ConfigError
from polymodal.models.layers import (
    LearnedPositionalEmbedding,
    Packing,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    Transformer,
)
from polymodal.models.tower import LayerGroup, Tower, TowerFeatures, build_projection
from polymodal.pretrained import downloads_allowed, resolve_pretrained


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B, L, W) over real tokens; sentence-transformers' mean pooling."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def _check_ids(ids: Tensor, mask: Tensor | None) -> None:
    if ids.ndim != 2:
        raise ValueError(f"expected token ids of shape (B, L), got {tuple(ids.shape)}")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"attention mask {tuple(mask.shape)} does not match ids {tuple(ids.shape)}")


# --------------------------------------------------------------------------- from scratch


class TextTransformer(Tower):
    """Token + position embeddings -> transformer (causal by default) -> LayerNorm ->
    pool at the first end-of-text token (CLIP) or by masked mean -> projection."""

    def __init__(self, cfg: TextTransformerConfig, output_dim: int) -> None:
        super().__init__()
        width = cfg.transformer.width
        self.cfg = cfg
        self.width, self.output_dim = width, output_dim
        self.token_embed = nn.Embedding(cfg.vocab_size, width)
        nn.init.normal_(self.token_embed.weight, std=0.02)  # CLIP's token init
        self.pos_embed: nn.Module | None = None
        self.rope: RotaryEmbedding | None = None
        if cfg.pos_embed == "learned":
            self.pos_embed = LearnedPositionalEmbedding(cfg.context_length, width, std=0.01)
        elif cfg.pos_embed == "sinusoidal":
            self.pos_embed = SinusoidalPositionalEmbedding(cfg.context_length, width)
        else:
            self.rope = RotaryEmbedding(width // cfg.transformer.heads)
        self.transformer = Transformer(cfg.transformer)
        self.norm = nn.LayerNorm(width, eps=cfg.transformer.norm_eps)
        self.head = build_projection(cfg.proj, width, output_dim, cfg.proj_bias)
        self.transformer.init_weights()

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> TowerFeatures:
        h, mask, key_mask = self._embed(x, mask)
        rope = self.rope(x.shape[1]) if self.rope is not None else None
        h = self.transformer(h, key_mask=key_mask, causal=self.cfg.causal, rope=rope)
        h = self.norm(h)
        if self.cfg.pool == "mean":
            pooled = masked_mean(h, mask)
        else:
            pooled = h[torch.arange(h.shape[0], device=h.device), self._pool_index(x, mask)]
        return TowerFeatures(tokens=h, mask=mask, pooled=pooled)

    def pooled_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.cfg.pool == "mean" or self.rope is not None or not self.transformer.supports_forward_at():
            return super().pooled_features(x, mask)  # reads every token, or positions per query
        h, mask, key_mask = self._embed(x, mask)
        index = self._pool_index(x, mask)
        causal = self.cfg.causal
        rows = torch.arange(x.shape[0], device=x.device)
        if mask is not None and not mask.all() and mask[rows, index].all():
            # Padding present, and every pooled token is a real one (a left-padded row pooling
            # "first" is not): the token-wise work runs on the real tokens only.
            packing = Packing.from_mask(mask)
            pooled = self.transformer.forward_at(packing.pack(h), index, key_mask=key_mask, causal=causal,
                                                 packing=packing)
        else:
            pooled = self.transformer.forward_at(h, index, key_mask=key_mask, causal=causal)
        return self.norm(pooled)

    def _embed(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Token ids -> (input tokens (B, L, W), the mask as booleans, the key mask the
        transformer needs)."""
        _check_ids(x, mask)
        length = x.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(f"{length} tokens exceed context_length {self.cfg.context_length}; "
                             "tokenize with the model's tokenizer, which truncates")
        h = self.token_embed(x)  # (B, L, W)
        if self.pos_embed is not None:
            h = h + self.pos_embed(length)
        mask = mask.bool() if mask is not None else None
        key_mask = mask
        if self.cfg.causal and mask is not None:
            # With right padding a causal mask already keeps every real token from
            # seeing padding, so no key mask is needed and SDPA keeps its causal kernel.
            if (mask[:, 1:] & ~mask[:, :-1]).any():
                raise ValueError("attention mask is not right-padded (a real token follows padding)")
            key_mask = None
        return h, mask, key_mask

    def _pool_index(self, ids: Tensor, mask: Tensor | None) -> Tensor:
        """(B,) the position each sequence pools at ("eot" or "first" pooling)."""
        if self.cfg.pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        is_eot = ids == self.cfg.eot_token_id
        if mask is not None:  # padding may use the end token's id (Hugging Face's CLIP tokenizers)
            is_eot = is_eot & mask
        first_eot = is_eot.int().argmax(dim=1)  # argmax returns the first maximum
        # A sequence cut without its end token (raw ids) pools its last real token.
        last = mask.sum(dim=1) - 1 if mask is not None else torch.full_like(first_eot, ids.shape[1] - 1)
        return torch.where(is_eot.any(dim=1), first_eot, last)

    def layer_groups(self) -> list[LayerGroup]:
        stem: LayerGroup = [self.token_embed]
        if self.pos_embed is not None:
            stem.append(self.pos_embed)
        blocks: list[LayerGroup] = [[b] for b in self.transformer.blocks]
        blocks[-1].append(self.norm)
        return [stem, *blocks]


# --------------------------------------------------------------------------- pretrained

# Dropout settings of common Hugging Face configs. They are zeroed: a locked tower must
# give the same embedding every time (its embeddings are cached during training).
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


class HFTextTower(Tower):
    """A Hugging Face `AutoModel` text encoder with mean (or first-token) pooling.

    The architecture is rebuilt from `cfg.hf_config`; `load_pretrained()` then loads
    the weights of `cfg.model`. A saved polymodal model carries the weights itself.
    """

    def __init__(self, cfg: HFTextConfig, output_dim: int) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if cfg.hf_config is None:
            cfg = self.resolve_config(cfg)
        assert cfg.hf_config is not None
        self.cfg = cfg
        settings = dict(cfg.hf_config)
        hf_config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        for key in _DROPOUT_KEYS:
            if hasattr(hf_config, key):
                setattr(hf_config, key, 0.0)
        self.backbone = AutoModel.from_config(hf_config)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # BERT's pooler is unused by mean pooling: no gradient
        self.width, self.output_dim = int(hf_config.hidden_size), output_dim
        self.head = build_projection(cfg.proj, self.width, output_dim, cfg.proj_bias)

    @staticmethod
    def resolve_config(cfg: HFTextConfig) -> HFTextConfig:
        """Fill in `hf_config` from the pretrained model's directory."""
        if cfg.hf_config is not None:
            return cfg
        from transformers import AutoConfig

        source = resolve_pretrained(cfg.model)
        try:
            hf_config = AutoConfig.from_pretrained(source, local_files_only=not downloads_allowed())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the config of pretrained text model {cfg.model!r}: "
                              f"{err}") from None
        return dataclasses.replace(cfg, hf_config=_plain(hf_config.to_diff_dict()))

    def load_pretrained(self) -> bool:
        from transformers import AutoModel

        source = resolve_pretrained(self.cfg.model)
        with quiet_transformers():
            pretrained = AutoModel.from_pretrained(source, local_files_only=not downloads_allowed())
        result = self.backbone.load_state_dict(pretrained.state_dict(), strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith("pooler.")]
        if result.missing_keys or unexpected:
            raise CheckpointError(f"pretrained text model {self.cfg.model!r} does not fit its config: "
                                  f"missing {result.missing_keys[:5]}, unexpected {unexpected[:5]}")
        return True

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.backbone.gradient_checkpointing_enable({"use_reentrant": False})
        elif self.backbone.is_gradient_checkpointing:
            self.backbone.gradient_checkpointing_disable()

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> TowerFeatures:
        _check_ids(x, mask)
        if mask is None:
            mask = torch.ones_like(x)
        h = self.backbone(input_ids=x, attention_mask=mask).last_hidden_state  # (B, L, W)
        pooled = masked_mean(h, mask) if self.cfg.pool == "mean" else h[:, 0]
        return TowerFeatures(tokens=h, mask=mask.bool(), pooled=pooled)

    def layer_groups(self) -> list[LayerGroup]:
        layers = self._layer_list()
        in_layers = {id(p) for p in layers.parameters()}
        before: LayerGroup = []  # embeddings
        after: LayerGroup = []  # e.g. a final norm; unlocked together with the last layer
        passed_layers = False
        for p in self.backbone.parameters():  # registration order: input to output
            if id(p) in in_layers:
                passed_layers = True
            else:
                (after if passed_layers else before).append(p)
        groups: list[LayerGroup] = [before] + [[layer] for layer in layers]
        groups[-1].extend(after)
        return groups

    def _layer_list(self) -> nn.ModuleList:
        n_layers = self.backbone.config.num_hidden_layers
        for module in self.backbone.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return module
        raise ConfigError(f"cannot find the {n_layers} transformer layers of {self.cfg.model!r}")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading progress bar and notices (e.g. about the
    unused pooler) for one call, restoring the user's settings afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _plain(value: Any) -> Any:
    """JSON-safe copy of a transformers config dict (drops torch dtypes and the like)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
