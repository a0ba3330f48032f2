"""Data parallelism under torchrun: process group set-up and gradient averaging.

Gradients are averaged with an explicit all-reduce after the backward passes rather than
by wrapping the model in DistributedDataParallel: gradient caching runs several backward
passes per step and computes the loss outside the model's forward, which DDP's hooks do
not follow. The result is what DDP computes (the mean of the ranks' gradients); with the
loss's gather-with-gradient that equals one process on the global batch
(tests/unit/test_losses_distributed.py, tests/integration/test_train_ddp.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from polymodal.errors import ConfigError
from polymodal.models import linear as packed_linear


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_setting: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL
    on GPU), or run as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is available (use auto or cpu)")
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def broadcast_parameters(model: nn.Module, info: DistInfo) -> None:
    """Start every rank from rank 0's weights (what DDP does at construction)."""
    if info.world_size > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
        packed_linear.invalidate()  # collectives write weights without bumping their version counters


def average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Mean of every rank's gradients, in one flat all-reduce. A parameter no rank
    computed a gradient for keeps grad None, as in one process (AdamW then skips it)."""
    if info.world_size == 1:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=info.device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [has_grad])
    dist.all_reduce(flat)
    flat[:-len(params)] /= info.world_size
    any_grad = flat[-len(params):] > 0
    offset = 0
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone() if any_grad[i] else None
        offset += g.numel()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision (e.g. early stopping), on every rank."""
    if info.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (an interrupt, a spent time budget)."""
    if info.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def merge_dicts(local: dict[str, str], info: DistInfo) -> dict[str, str]:
    """The union of every rank's dict (e.g. the unreadable images each rank met)."""
    if info.world_size == 1:
        return local
    parts: list[dict[str, str] | None] = [None] * info.world_size
    dist.all_gather_object(parts, local)
    return {k: v for part in parts if part for k, v in part.items()}
