"""Two CPU processes under gloo: the gathered loss and the DDP-averaged gradients equal
one process's loss and gradients on the same global batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polymodal.data.loader import Batch
from polymodal.losses import ClipLoss, SigLipLoss, TripletLoss, VSEppLoss
from polymodal.losses.base import ImageTextLoss
from polymodal.models import DualEncoder
from polymodal.tokenizer import Tokenizer, train_bpe
from polymodal.train.distributed import DistInfo, average_gradients
from polymodal.train.step import backward_step
from polymodal.train.task import ContrastiveTask
from tests.helpers import tiny_config

WORLD = 2
GLOBAL_BATCH = 8


CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "black") for s in ("cat", "dog")]


def _losses() -> dict[str, ImageTextLoss]:
    return {"clip": ClipLoss(), "siglip": SigLipLoss(), "triplet": TripletLoss(mining="semi-hard"),
            "vsepp": VSEppLoss()}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g)
    groups = torch.tensor([0, 1, 2, 2, 3, 4, 5, 1])  # duplicates within and across the two halves
    return images, groups


def _loss_and_grads(model: DualEncoder, loss_fn: ImageTextLoss, rows: slice, chunks: int = 1,
                    info: DistInfo | None = None) -> tuple[float, dict]:
    """The polymodal training step on rows of the global batch: gradient caching with
    `chunks`, gradients averaged over ranks when `info` says there are several."""
    images, groups = _batch()
    tokenizer = Tokenizer(train_bpe(CAPTIONS * 2, 300, min_frequency=1), 12, tiny_config().tokenizer)
    task = ContrastiveTask(model, tokenizer, CAPTIONS)
    batch = Batch(images[rows], torch.arange(GLOBAL_BATCH)[rows], groups[rows], torch.arange(GLOBAL_BATCH)[rows], [])
    model.zero_grad(set_to_none=True)
    loss = backward_step(task, loss_fn, batch, chunks=chunks)
    params = list(model.parameters())
    if info is not None:
        average_gradients(params, info)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = DualEncoder(tiny_config(init_logit_bias=-5.0))
    per_rank = GLOBAL_BATCH // WORLD
    info = DistInfo(rank, WORLD, torch.device("cpu"))
    results = {}
    for name, loss_fn in _losses().items():
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        results[name] = _loss_and_grads(model, loss_fn, rows, info=info)
        results[f"{name}-cached"] = _loss_and_grads(model, loss_fn, rows, chunks=2, info=info)
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
        for variant in (name, f"{name}-cached"):  # with gradient caching of 2 chunks per rank
            assert distributed[variant][0] == pytest.approx(loss, rel=1e-5), variant
            assert distributed[variant][1].keys() == grads.keys(), variant
            for param, grad in grads.items():
                # Two processes sum the batch in another order: float32 rounding of up to ~1e-6 of
                # the gradient's scale (seen: 4.6e-6 in a token embedding gradient of scale 4.9).
                # A wrong reduction (a missing average, a dropped rank) is off by the scale itself.
                scale = max(1.0, grad.abs().max().item())
                torch.testing.assert_close(distributed[variant][1][param], grad, atol=1e-5 * scale, rtol=1e-4,
                                           msg=f"{variant}: {param}")
