"""Two CPU processes under gloo: the gathered loss and the DDP-averaged gradients equal
one process's loss and gradients on the same global batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polymodal.losses import ClipLoss, SigLipLoss, TripletLoss
from polymodal.losses.base import ImageTextLoss
from polymodal.models import DualEncoder
from tests.helpers import tiny_config

WORLD = 2
GLOBAL_BATCH = 8


def _losses() -> dict[str, ImageTextLoss]:
    return {"clip": ClipLoss(), "siglip": SigLipLoss(), "triplet": TripletLoss(mining="hard")}


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g)
    ids = torch.randint(3, 300, (GLOBAL_BATCH, 6), generator=g)
    ids[:, -1] = 2
    groups = torch.tensor([0, 1, 2, 2, 3, 4, 5, 5])  # duplicates across the two halves too
    return images, ids, groups


def _loss_and_grads(model: DualEncoder, loss_fn: ImageTextLoss, rows: slice) -> tuple[float, dict]:
    images, ids, groups = _batch()
    model.zero_grad()
    loss = loss_fn(model(images=images[rows], input_ids=ids[rows]), groups[rows])
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    return loss.item(), grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = DualEncoder(tiny_config(init_logit_bias=-5.0))
    per_rank = GLOBAL_BATCH // WORLD
    results = {}
    for name, loss_fn in _losses().items():
        loss, grads = _loss_and_grads(model, loss_fn, slice(rank * per_rank, (rank + 1) * per_rank))
        for g in grads.values():  # what DistributedDataParallel does to gradients
            dist.all_reduce(g)
            g /= WORLD
        results[name] = (loss, grads)
    if rank == 0:
        torch.save(results, Path(out_dir) / "distributed.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_and_gradients_equal_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    distributed = torch.load(tmp_path / "distributed.pt", weights_only=True)
    torch.manual_seed(0)
    model = DualEncoder(tiny_config(init_logit_bias=-5.0))
    for name, loss_fn in _losses().items():
        loss, grads = _loss_and_grads(model, loss_fn, slice(None))
        assert distributed[name][0] == pytest.approx(loss, rel=1e-5), name
        for param, grad in grads.items():
            torch.testing.assert_close(distributed[name][1][param], grad, atol=1e-6, rtol=1e-4,
                                       msg=f"{name}: {param}")
