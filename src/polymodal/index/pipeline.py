"""Indexing as three stages: reader (reader.py: list, diff, hash) → encoder (images decoded
in worker processes while the model runs on the previous batch) → writer (commits every
`flush_every` vectors, so a killed run loses at most one batch and resumes from there).

    report = index_source(store, loaded_model, "photos/", progress=print)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from polymodal.eval.embed import ImageDataset, check_finite, keep_items
from polymodal.index.reader import Found, Plan, Progress, SourceListing, image_metadata, list_source, plan_run
from polymodal.index.store import NewItem, Store
from polymodal.inference import autocast, check_precision, embed_texts, model_device, resolve_precision
from polymodal.models.dual_encoder import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.transforms import DEFAULT_MAX_PIXELS, ImageTransform


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 64
    num_workers: int | None = 0  # image-decoding processes; 0 decodes in this process; None: decode_workers
    flush_every: int = 1024  # vectors per commit: the most a killed run has to redo
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    # polymodal.inference.PRECISIONS; int8 is applied when the model is loaded. fp32 by
    # default, also on GPUs: queries are embedded in fp32, and a store's vectors should match.
    precision: str = "fp32"
    hash_threads: int = 4


    def __post_init__(self) -> None:
        check_precision(self.precision)


DEFAULT_OPTIONS = IndexOptions()


@dataclass
class IndexReport:
    source: str
    embedded: int = 0  # images whose content was new
    reused: int = 0  # renamed, copied or touched files: vector reused
    unchanged: int = 0
    removed: int = 0  # items (images and captions) the source no longer holds
    captions_added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason), this run and earlier
    dropped: dict[str, str] = field(default_factory=dict)  # source rows without a usable image
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.embedded or self.reused or self.removed or self.captions_added)


@dataclass
class Encoder:
    """What the encoder stage needs of a model."""

    model: DualEncoder
    tokenizer: Tokenizer
    transform: ImageTransform


def index_source(store: Store, encoder: Encoder, spec: str, options: IndexOptions = DEFAULT_OPTIONS,
                 progress: Progress | None = None) -> IndexReport:
    """Bring the store up to date with source `spec`: embed what is new, reuse what is
    known, remove what is gone, report what could not be read."""
    start = time.perf_counter()
    listing = list_source(spec)
    store.add_root(listing.source)
    plan = plan_run(store, listing, options.hash_threads, progress)
    report = IndexReport(listing.source, unchanged=plan.unchanged, dropped=plan.dropped,
                         skipped=list(plan.still_unreadable))
    _add_reused(store, plan, report)
    _embed_new(store, encoder, plan, options, report, progress)
    _add_captions(store, encoder, plan, listing, options, report, progress)
    report.removed = store.remove(plan.remove) if plan.remove else 0
    report.seconds = time.perf_counter() - start
    return report


def _add_reused(store: Store, plan: Plan, report: IndexReport) -> None:
    items = [_image_item(found, sha, plan.source) for found, sha in plan.reuse]
    for part in _chunks(items, 4096):
        store.add(part)
    report.reused = len(items)


def _image_item(found: Found, sha: str, source: str) -> NewItem:
    return NewItem(found.uri, "image", sha, found.size, found.mtime_ns, metadata=image_metadata(found, source))


def decode_workers(requested: int | None, device: torch.device) -> int:
    """Image-decoding processes: as requested, else 2 where the model leaves cores to them (a
    GPU, or more than 2 CPU cores) and 0 on a machine of 2 cores, where workers take the
    cores the model's two threads need. There, bench/ingest.py measured 0 as fast as 2 for
    ViT-B/32 and 1.35x as fast for a 64-px model."""
    if requested is not None:
        return requested
    return 2 if device.type != "cpu" or usable_cores() > 2 else 0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, which containers narrow)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


@torch.no_grad()
def encode_batches(encoder: Encoder, found: Sequence[Found], options: IndexOptions
                   ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
    """Encoder stage: yields (positions embedded, their vectors, [(position, reason)] unreadable)
    batch by batch; decoding runs in worker processes ahead of the model (`decode_workers`)."""
    model = encoder.model.eval()
    device = model_device(model)
    dtype = resolve_precision(options.precision, device)
    dataset = ImageDataset([f.ref for f in found], encoder.transform, options.max_pixels)
    workers = decode_workers(options.num_workers, device)
    loader = DataLoader(dataset, batch_size=options.batch_size, collate_fn=keep_items,
                        num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False)
    for items in loader:
        good = [(i, pixels) for i, pixels, _ in items if pixels is not None]
        bad = [(i, reason) for i, pixels, reason in items if pixels is None]
        vectors = np.empty((0, model.config.embed_dim), dtype=np.float32)
        if good:
            pixels = encoder.transform.normalise(torch.stack([p for _, p in good])).to(device)
            with autocast(device, dtype):
                embeds = model.encode_image(pixels).float()
            check_finite(embeds, "image")
            vectors = embeds.cpu().numpy()
        yield [i for i, _ in good], vectors, bad


def _embed_new(store: Store, encoder: Encoder, plan: Plan, options: IndexOptions, report: IndexReport,
               progress: Progress | None) -> None:
    """Writer stage: commit vectors every `flush_every`; remember unreadable files."""
    todo = plan.embed
    pending: list[NewItem] = []
    pending_vectors: list[np.ndarray] = []
    done = 0
    for positions, vectors, bad in encode_batches(encoder, [f for f, _ in todo], options):
        pending += [_image_item(todo[i][0], todo[i][1], plan.source) for i in positions]
        pending_vectors.append(vectors)
        if bad:
            unreadable = [(todo[i][0], reason) for i, reason in bad]
            store.record_skipped([(f.uri, f.size, f.mtime_ns, reason) for f, reason in unreadable])
            report.skipped += [(f.uri, reason) for f, reason in unreadable]
        if len(pending) >= options.flush_every:
            store.add(pending, np.concatenate(pending_vectors))
            pending, pending_vectors = [], []
        done += len(positions) + len(bad)
        report.embedded += len(positions)
        if progress is not None:
            progress("embedding", done, len(todo))
    if pending:
        store.add(pending, np.concatenate(pending_vectors))


def _add_captions(store: Store, encoder: Encoder, plan: Plan, listing: SourceListing, options: IndexOptions,
                  report: IndexReport, progress: Progress | None) -> None:
    """Captions of stored images only: a caption of an unreadable image has nothing to find."""
    stored = {item.uri for item in store.live_items("image") if item.metadata.get("source") == plan.source}
    captions = [c for c in plan.captions if c.metadata["image"] in stored]
    known = store.known_keys(c.key for c in captions)
    done = 0
    dtype = resolve_precision(options.precision, model_device(encoder.model))
    for part in _chunks(captions, max(options.flush_every, 256)):
        new = list({c.key: c.text or "" for c in part if c.key not in known}.items())
        vectors = np.zeros((len(part), store.manifest.dim), dtype=np.float32)
        if new:
            embeds = embed_texts(encoder.model, encoder.tokenizer, [text for _, text in new], dtype=dtype)
            check_finite(embeds, "text")
            row_of = {key: row for row, (key, _) in enumerate(new)}
            for n, item in enumerate(part):
                if item.key in row_of:
                    vectors[n] = embeds[row_of[item.key]].cpu().numpy()
        store.add(part, vectors)
        known.update(key for key, _ in new)
        done += len(part)
        if progress is not None:
            progress("captions", done, len(captions))
    report.captions_added = len(captions)


def _chunks(items: list[NewItem], size: int) -> Iterator[list[NewItem]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
