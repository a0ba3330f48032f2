"""Embedding whole image sets for evaluation: every readable image once (unreadable
ones are skipped and reported, never replaced), every caption of those images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from polymodal.config import PreprocessConfig
from polymodal.data.records import ImageRef, PairRecord, PairSet
from polymodal.errors import DataError, ImageDecodeError
from polymodal.inference import TextFeatureCache, autocast, embed_texts, model_device
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import DEFAULT_MAX_PIXELS, ImageTransform

# Called with the number of images embedded so far and the total.
Progress = Callable[[int, int], None]


@dataclass
class EmbeddedImages:
    embeds: np.ndarray  # (K, E) float32, L2-normalised, for the K readable images
    kept: np.ndarray  # (K,) positions of those images in the input list
    skipped: list[tuple[str, str]]  # unreadable images: (image, reason)


class ImageDataset(Dataset[tuple[int, torch.Tensor | None, str]]):
    """(position, pixels, "") for a readable image, (position, None, reason) for an
    unreadable one, so that one bad file never stops a batch (or a worker). The pixels are
    uint8 (`ImageTransform.pixels`); normalise the stacked batch with `transform.normalise`."""

    def __init__(self, refs: Sequence[ImageRef], transform: ImageTransform,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.refs, self.transform, self.max_pixels = refs, transform, max_pixels

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = self.refs[i].load(self.max_pixels, self.transform.cfg.background)
            return i, self.transform.pixels(image), ""
        except ImageDecodeError as err:
            return i, None, str(err)


def pixel_batches(records: Sequence[PairRecord], preprocess: PreprocessConfig, batch_size: int,
                  device: torch.device | str) -> Iterator[tuple[Sequence[PairRecord], torch.Tensor]]:
    """(records, their images as one tensor on `device`), `batch_size` records at a time, in
    order: what the VQA and caption evaluations feed their models."""
    transform = ImageTransform(preprocess)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        yield chunk, torch.stack([transform(r.image.load(background=preprocess.background)) for r in chunk]).to(device)


def keep_items(items: list[tuple[int, torch.Tensor | None, str]]) -> list[tuple[int, torch.Tensor | None, str]]:
    """A DataLoader collate_fn that leaves the batch a list (some images may be None)."""
    return items


@torch.no_grad()
def embed_images(model: DualEncoder, refs: Sequence[ImageRef], transform: ImageTransform, batch_size: int = 128,
                 num_workers: int = 0, dtype: torch.dtype | None = None,
                 progress: Progress | None = None) -> EmbeddedImages:
    """Embed every readable image of `refs`; an empty or fully unreadable list is an error."""
    if not refs:
        raise DataError("no images to embed")
    model.eval()
    device = model_device(model)
    loader = DataLoader(ImageDataset(refs, transform), batch_size=batch_size, collate_fn=keep_items,
                        num_workers=num_workers)
    embeds, kept, skipped, done = [], [], [], 0
    for items in loader:
        good = [(i, pixels) for i, pixels, _ in items if pixels is not None]
        skipped += [(refs[i].name, reason) for i, pixels, reason in items if pixels is None]
        if good:
            pixels = transform.normalise(torch.stack([p for _, p in good])).to(device)
            with autocast(device, dtype):
                embeds.append(model.encode_image(pixels).float().cpu())
            kept += [i for i, _ in good]
        done += len(items)
        if progress is not None:
            progress(done, len(refs))
    if not embeds:
        raise DataError(f"none of the {len(refs)} images could be read, e.g. {skipped[0][0]}: {skipped[0][1]}")
    out = torch.cat(embeds)
    check_finite(out, "image")
    return EmbeddedImages(out.numpy(), np.array(kept), skipped)


def check_finite(embeds: torch.Tensor, what: str) -> None:
    if not torch.isfinite(embeds).all():
        raise DataError(f"the model produced NaN or infinite {what} embeddings (a diverged model, or bf16 "
                        "overflow: try --precision fp32)")


@dataclass
class EmbeddedPairs:
    image_embeds: np.ndarray  # (N, E) float32, L2-normalised
    text_embeds: np.ndarray  # (M, E)
    image_groups: np.ndarray  # (N,)
    text_groups: np.ndarray  # (M,)
    image_keys: list[str]  # record keys of the N images
    texts: list[str]  # the M captions
    skipped: list[tuple[str, str]]  # unreadable images: (image, reason)


def embed_pair_set(model: DualEncoder, tokenizer: Tokenizer, pairs: PairSet, transform: ImageTransform,
                   batch_size: int = 128, num_workers: int = 0, dtype: torch.dtype | None = None,
                   text_cache: TextFeatureCache | None = None, progress: Progress | None = None) -> EmbeddedPairs:
    """Images of readable records, and every caption of those records as text queries."""
    images = embed_images(model, [r.image for r in pairs.records], transform, batch_size, num_workers, dtype,
                          progress)
    used = [pairs.records[i] for i in images.kept]
    texts = [c for r in used for c in r.captions]
    text_groups = np.array([r.group for r in used for _ in r.captions])
    text_embeds = embed_texts(model, tokenizer, texts, batch_size=256, dtype=dtype, cache=text_cache)
    check_finite(text_embeds, "text")
    return EmbeddedPairs(images.embeds, text_embeds.cpu().numpy(), np.array([r.group for r in used]), text_groups,
                         [r.key for r in used], texts, images.skipped)
