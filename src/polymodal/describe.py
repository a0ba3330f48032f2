"""One-line descriptions of presets and models, for `polymodal models list|info`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from polymodal.config import (
    DualEncoderConfig,
    HFTextConfig,
    ResNetConfig,
    TextTransformerConfig,
    TransformerConfig,
    ViTConfig,
)
from polymodal.registry import get_preset


def _blocks(t: TransformerConfig) -> str:
    return f"width {t.width}, {t.layers} layers, {t.heads} heads, {t.act}"


_TOWER_SUMMARIES: dict[type, Callable[[Any], str]] = {
    ViTConfig: lambda c: f"ViT/{c.patch_size} ({_blocks(c.transformer)}, {c.pool} pool)",
    ResNetConfig: lambda c: f"ResNet (widths {'-'.join(map(str, c.widths))}, "
                            f"depths {'-'.join(map(str, c.depths))})",
    TextTransformerConfig: lambda c: f"Transformer ({_blocks(c.transformer)}, vocab {c.vocab_size}, "
                                     f"context {c.context_length}, {c.pool} pool)",
    HFTextConfig: lambda c: f"pretrained {c.model} ({c.pool} pool, context {c.context_length})",
}


# Short forms for tables: kind, width x depth.
_TOWER_NAMES: dict[type, Callable[[Any], str]] = {
    ViTConfig: lambda c: f"ViT/{c.patch_size} {c.transformer.width}x{c.transformer.layers}",
    ResNetConfig: lambda c: f"ResNet {c.widths[-1]}x{sum(c.depths)}",
    TextTransformerConfig: lambda c: f"Transformer {c.transformer.width}x{c.transformer.layers}",
    HFTextConfig: lambda c: f"{c.model} (pretrained)",
}


def summarize_tower(config: Any, short: bool = False) -> str:
    return (_TOWER_NAMES if short else _TOWER_SUMMARIES)[type(config)](config)


def describe_preset(name: str) -> dict[str, Any]:
    config = get_preset(name)
    return {"vision": summarize_tower(config.vision, short=True),
            "text": summarize_tower(config.text, short=True),
            "embed_dim": config.embed_dim, "image_size": config.preprocess.image_size}


def describe_model(source: str | Path) -> dict[str, Any]:
    """Architecture and parameter counts of a preset or model directory, plus id,
    provenance, training summary and metrics for a directory."""
    from polymodal.checkpoint import read_card
    from polymodal.models import DualEncoder

    card = read_card(source) if Path(source).is_dir() else None
    config: DualEncoderConfig = card.config if card else get_preset(str(source))
    model = DualEncoder(config)
    info: dict[str, Any] = {
        "image tower": f"{summarize_tower(config.vision)}, {_millions(model.visual)} parameters",
        "text tower": f"{summarize_tower(config.text)}, {_millions(model.text)} parameters",
        "embedding": f"{config.embed_dim} dims, images {config.preprocess.image_size} px",
    }
    if card:
        info.update({"model id": card.model_id, "created": card.created, "source": card.source or "-",
                     "training": card.training or "-", "metrics": card.metrics or "-"})
    return info


def _millions(module: Any) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"
