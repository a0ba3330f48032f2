"""Deterministic, resumable, corruption-tolerant batches."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.config import AugmentConfig, PreprocessConfig
from polymodal.data.loader import PairDataset, ResumableBatchSampler, collate
from polymodal.data.records import ImageRef, PairRecord
from polymodal.errors import DataError
from polymodal.transforms import ImageTransform, TrainTransform


def _records(tmp_path: Path, n: int, corrupt: tuple[int, ...] = ()) -> list[PairRecord]:
    records = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG broken")
        else:
            Image.new("RGB", (20, 20), (i * 10 % 256, 50, 90)).save(path)
        records.append(PairRecord(ImageRef(str(path)), (f"caption {i} a", f"caption {i} b"), group=i, key=path.name))
    return records


def test_samples_are_deterministic_per_epoch_and_index(tmp_path: Path) -> None:
    transform = TrainTransform(PreprocessConfig(image_size=16), AugmentConfig(scale=(0.3, 1.0), brightness=0.5))
    dataset = PairDataset(_records(tmp_path, 4), transform, seed=3)
    a, b = dataset[(2, 0)], dataset[(2, 0)]
    torch.testing.assert_close(a.pixels, b.pixels)
    assert a.caption_id == b.caption_id and a.caption_id in (4, 5)  # record 2's captions are ids 4, 5
    other_epochs = [dataset[(2, e)] for e in range(1, 8)]
    assert any(not torch.allclose(a.pixels, o.pixels) for o in other_epochs)
    assert {o.caption_id for o in other_epochs} == {4, 5}


def test_unreadable_images_are_replaced_by_the_next_and_reported(tmp_path: Path) -> None:
    dataset = PairDataset(_records(tmp_path, 5, corrupt=(1, 2)), ImageTransform(PreprocessConfig(image_size=16)))
    sample = dataset[(1, 0)]
    assert sample.index == 3 and [name for name, _ in sample.skipped] == [str(tmp_path / "1.png"),
                                                                           str(tmp_path / "2.png")]
    batch = collate([dataset[(0, 0)], sample])
    assert batch.pixels.shape == (2, 3, 16, 16) and batch.indices.tolist() == [0, 3] and len(batch.skipped) == 2
    assert "not a readable image" in batch.skipped[0][1]


def test_a_run_of_unreadable_images_is_an_error(tmp_path: Path) -> None:
    dataset = PairDataset(_records(tmp_path, 20, corrupt=tuple(range(20))), ImageTransform(PreprocessConfig(16)))
    with pytest.raises(DataError, match="16 images in a row could not be read"):
        dataset[(0, 0)]
    with pytest.raises(DataError, match="empty"):
        PairDataset([], ImageTransform(PreprocessConfig(16)))


def test_sampler_covers_each_epoch_once_and_resumes_exactly() -> None:
    full = list(ResumableBatchSampler(10, 3, total_steps=9, seed=1))
    assert len(full) == 9 and all(len(b) == 3 for b in full)
    for epoch in range(3):  # 3 batches per epoch; record 10 % 3 = 1 left out each epoch
        indices = [i for batch in full[3 * epoch:3 * epoch + 3] for i, e in batch]
        assert len(set(indices)) == 9 and all(e == epoch for b in full[3 * epoch:3 * epoch + 3] for _, e in b)
    assert full[:3] != full[3:6]  # a new order each epoch
    resumed = list(ResumableBatchSampler(10, 3, total_steps=9, seed=1, start_step=4))
    assert resumed == full[4:]


def test_ranks_split_the_global_batch() -> None:
    single = list(ResumableBatchSampler(20, 8, total_steps=4, seed=0))
    ranks = [list(ResumableBatchSampler(20, 8, total_steps=4, seed=0, rank=r, world_size=2)) for r in range(2)]
    for step in range(4):
        assert ranks[0][step] + ranks[1][step] == single[step]
    with pytest.raises(DataError, match="not divisible by 3 processes"):
        ResumableBatchSampler(20, 8, total_steps=4, world_size=3)
    with pytest.raises(DataError, match="fewer than one batch"):
        ResumableBatchSampler(5, 8, total_steps=4)


def test_caption_ids_index_the_caption_table(tmp_path: Path) -> None:
    records = _records(tmp_path, 3)
    dataset = PairDataset(records, ImageTransform(PreprocessConfig(16)), seed=0)
    table = [c for r in records for c in r.captions]
    for i in range(3):
        sample = dataset[(i, 0)]
        assert table[sample.caption_id] in records[i].captions
    assert np.array_equal(dataset.caption_start, [0, 2, 4])


def test_replacements_reach_the_trainer_through_worker_processes(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    dataset = PairDataset(_records(tmp_path, 6, corrupt=(2,)), ImageTransform(PreprocessConfig(image_size=16)))
    sampler = ResumableBatchSampler(6, 3, total_steps=2, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=1)
    batches = list(loader)
    skipped = [name for b in batches for name, _ in b.skipped]
    assert skipped == [str(tmp_path / "2.png")]  # both batches cover the 6 records once
    assert sorted(i for b in batches for i in b.indices.tolist()).count(3) == 2  # record 3 stood in for 2
