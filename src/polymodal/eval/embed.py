"""Embedding a whole image-text set for evaluation: every readable image once, every
caption of those images as a text query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from polymodal.data.loader import PairDataset, collate, sequential_batches
from polymodal.data.records import PairSet
from polymodal.inference import TextFeatureCache, autocast, embed_texts, model_device
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import ImageTransform


@dataclass
class EmbeddedPairs:
    image_embeds: np.ndarray  # (N, E) float32, L2-normalised
    text_embeds: np.ndarray  # (M, E)
    image_groups: np.ndarray  # (N,)
    text_groups: np.ndarray  # (M,)
    image_keys: list[str]  # record keys of the N images
    texts: list[str]  # the M captions
    skipped: list[tuple[str, str]]  # unreadable images: (image, reason)


@torch.no_grad()
def embed_pair_set(model: DualEncoder, tokenizer: Tokenizer, pairs: PairSet, transform: ImageTransform,
                   batch_size: int = 128, num_workers: int = 0, dtype: torch.dtype | None = None,
                   text_cache: TextFeatureCache | None = None) -> EmbeddedPairs:
    model.eval()
    device = model_device(model)
    loader = DataLoader(PairDataset(pairs.records, transform), batch_sampler=sequential_batches(len(pairs), batch_size),
                        collate_fn=collate, num_workers=num_workers)
    embeds, indices, skipped = [], [], []
    for batch in loader:
        with autocast(device, dtype):
            embeds.append(model.encode_image(batch.pixels.to(device)).float().cpu())
        indices.append(batch.indices)
        skipped += batch.skipped
    all_indices = torch.cat(indices).numpy()
    # An unreadable image was replaced by the next record, which may then appear twice.
    _, first = np.unique(all_indices, return_index=True)
    keep = np.sort(first)
    used = [pairs.records[i] for i in all_indices[keep]]
    texts = [c for r in used for c in r.captions]
    text_groups = np.array([r.group for r in used for _ in r.captions])
    text_embeds = embed_texts(model, tokenizer, texts, batch_size=256, dtype=dtype, cache=text_cache)
    skipped_unique = list(dict.fromkeys(skipped))
    return EmbeddedPairs(torch.cat(embeds).numpy()[keep], text_embeds.cpu().numpy(),
                         np.array([r.group for r in used]), text_groups, [r.key for r in used], texts,
                         skipped_unique)
