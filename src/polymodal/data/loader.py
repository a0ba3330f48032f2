"""From records to training batches: a map-style dataset, a resumable batch sampler and
a collate function.

Determinism is by construction: the order of epoch e is a permutation drawn from
(seed, e); the caption and the augmentation of record i in epoch e come from a
generator seeded with (seed, e, i). So batch k of a run is the same whether the run went
straight through or was killed and resumed, and whichever worker loaded it.

A record whose image cannot be decoded is replaced by the next readable record (so
batch sizes stay equal across processes) and reported in `Batch.skipped`; the trainer
counts them and names them in its summary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from polymodal.data.records import PairRecord
from polymodal.errors import DataError, ImageDecodeError
from polymodal.transforms import DEFAULT_MAX_PIXELS, ImageTransform, TrainTransform

# How many following records to try before a run of unreadable images is an error.
MAX_CONSECUTIVE_FAILURES = 16


@dataclass
class Sample:
    pixels: Tensor  # (3, S, S)
    caption_id: int  # index into the caption table (PairSet.captions())
    group: int
    index: int  # record index actually used
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason) replaced


@dataclass
class Batch:
    pixels: Tensor  # (B, 3, S, S)
    caption_ids: Tensor  # (B,) int64
    groups: Tensor  # (B,) int64
    indices: Tensor  # (B,) int64
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return self.pixels.shape[0]


class PairDataset(Dataset[Sample]):
    """Item (index, epoch) -> Sample with one caption drawn for that epoch."""

    def __init__(self, records: Sequence[PairRecord], transform: ImageTransform, seed: int = 0,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        if not records:
            raise DataError("the dataset is empty")
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.max_pixels = max_pixels
        counts = np.array([len(r.captions) for r in self.records])
        self.caption_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, epoch = item
        skipped: list[tuple[str, str]] = []
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % len(self.records)
            record = self.records[i]
            rng = np.random.default_rng([self.seed, epoch, i])
            caption = int(rng.integers(len(record.captions)))
            try:
                image = record.image.load(self.max_pixels, self.transform.cfg.background)
            except ImageDecodeError as err:
                skipped.append((record.image.name, str(err)))
                continue
            pixels = self.transform(image, rng) if isinstance(self.transform, TrainTransform) \
                else self.transform(image)
            return Sample(pixels, int(self.caption_start[i]) + caption, record.group, i, skipped)
        raise DataError(f"{MAX_CONSECUTIVE_FAILURES} images in a row could not be read, e.g. "
                        f"{skipped[0][0]}: {skipped[0][1]}")


def collate(samples: list[Sample]) -> Batch:
    return Batch(
        pixels=torch.stack([s.pixels for s in samples]),
        caption_ids=torch.tensor([s.caption_id for s in samples], dtype=torch.long),
        groups=torch.tensor([s.group for s in samples], dtype=torch.long),
        indices=torch.tensor([s.index for s in samples], dtype=torch.long),
        skipped=[item for s in samples for item in s.skipped],
    )


class ResumableBatchSampler:
    """Global batches of `batch_size` record indices, epoch after epoch, from
    `start_step` to `total_steps`; under DDP each rank yields its contiguous slice of
    the global batch. The last incomplete batch of an epoch is dropped."""

    def __init__(self, num_records: int, batch_size: int, total_steps: int, seed: int = 0,
                 start_step: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} is not divisible by {world_size} processes")
        if num_records < batch_size:
            raise DataError(f"the dataset has {num_records} records, fewer than one batch of "
                            f"{batch_size}; lower the batch size")
        self.num_records, self.batch_size, self.total_steps = num_records, batch_size, total_steps
        self.seed, self.start_step, self.rank, self.world_size = seed, start_step, rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_records // self.batch_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_rank = self.batch_size // self.world_size
        order, order_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
                order_epoch = epoch
            assert order is not None
            batch = order[position * self.batch_size:(position + 1) * self.batch_size]
            mine = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
            yield [(int(i), epoch) for i in mine]


def sequential_batches(num_records: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Every record once, in order (evaluation)."""
    return [[(i, 0) for i in range(start, min(start + batch_size, num_records))]
            for start in range(0, num_records, batch_size)]
