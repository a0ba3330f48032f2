"""Where a fusion model looks: the attention of each word of a text over the image patches.

    found = explain(model, tokenizer, transform, "photo.jpg", "a dog on a beach")
    render(found, "attention.png")      # the image, then one heatmap per word

The weights come from one fusion layer (the last by default), averaged over heads:
cross-attention from each word to the image tokens (cross layout), or the text-to-image
block of the joint self-attention (single stream). The class token is left out and each
word's weights are renormalised over the patches, so every map sums to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from polymodal.errors import DataError
from polymodal.models.fusion import FusionModel
from polymodal.models.layers import capture_attention
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageSource, ImageTransform, load_image


@dataclass
class Explanation:
    words: list[str]  # the text's tokens, special tokens left out
    maps: np.ndarray  # (words, grid, grid): each word's attention over the patches, summing to 1
    image: Image.Image  # the image as given (RGB)
    layer: int


@torch.no_grad()
def explain(model: FusionModel, tokenizer: Tokenizer, transform: ImageTransform, image: ImageSource, text: str,
            layer: int = -1) -> Explanation:
    if not text.strip():
        raise DataError("give a text to explain")
    picture = load_image(image)
    pixels = transform(picture)[None].to(next(model.parameters()).device)
    tokens = tokenizer([text]).to(pixels.device)
    image_tokens = model.image_tokens(pixels)
    blocks = model.encoder.transformer.blocks
    if not -len(blocks) <= layer < len(blocks):
        raise DataError(f"layer {layer}: the fusion encoder has {len(blocks)} layers")
    index = layer % len(blocks)
    with capture_attention(blocks[index]) as recorded:
        model.eval().fuse(tokens.input_ids, tokens.attention_mask, image_tokens)
    length = tokens.input_ids.shape[1]
    if model.cfg.kind == "cross":
        weights = recorded["cross_attn"][0][0].mean(dim=0)  # (L, M)
    else:
        weights = recorded["attn"][0][0].mean(dim=0)[:length, length:]  # text queries, image keys
    patches = weights[:, 1 if getattr(model.vision, "cls_token", None) is not None else 0:]  # patches only
    grid = math.isqrt(patches.shape[1])
    if grid * grid != patches.shape[1]:
        raise DataError(f"{patches.shape[1]} image tokens do not form a square grid of patches")
    maps = patches / patches.sum(dim=1, keepdim=True).clamp_min(1e-12)
    ids = tokens.input_ids[0].tolist()
    special = {tokenizer.pad_token_id, *(tokenizer.token_to_id(t) for t in ("<sot>", "<eot>", "[CLS]", "[SEP]"))}
    keep = [i for i, token_id in enumerate(ids) if token_id not in special]
    words = [tokenizer.backend.id_to_token(ids[i]) or "?" for i in keep]
    return Explanation([w.lstrip("Ġ▁") for w in words], maps[keep].reshape(len(keep), grid, grid).cpu().numpy(),
                       picture, index)


def render(found: Explanation, out: str | Path, columns: int = 6) -> Path:
    """The image and, for each word, the image under its attention heatmap, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(found.words)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    picture = np.asarray(found.image)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=10)
    height, width = picture.shape[:2]
    for ax, word, heat in zip(axes.flat[1:], found.words, found.maps, strict=False):
        ax.imshow(picture)
        ax.imshow(heat, cmap="inferno", alpha=0.55, extent=(0, width, height, 0), interpolation="bilinear")
        ax.set_title(word, fontsize=10)
    figure.suptitle(f"attention of each word over the image (fusion layer {found.layer})", fontsize=10)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
