"""Gathering embeddings across processes so a contrastive loss sees the global batch.

`gather_with_grad` keeps the autograd graph (as open_clip's gather_with_grad): the
backward of all_gather sums, over ranks, the gradient each rank's (identical) global
loss sends to this rank's slice. Every rank then holds world_size x the gradient of the
global loss for its own samples, and DDP's averaging of parameter gradients divides it
back out, so training equals one process on the global batch (tests/unit/
test_losses_distributed.py checks it with two gloo processes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.
    (all_reduce + slice rather than reduce_scatter: gloo has no reduce_scatter.)"""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return gather_no_grad(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """(B, ...) on each rank -> (world * B, ...) in rank order, differentiable."""
    if world_size() == 1:
        return tensor
    gathered: Tensor = _AllGather.apply(tensor)
    return gathered


def gather_no_grad(tensor: Tensor) -> Tensor:
    """All ranks' tensors concatenated, without gradient (for ids and labels)."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_batch(image: Tensor, text: Tensor, group_ids: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The global batch: every rank's image and text embeddings (with gradient) and
    group ids. Ranks must hold equal batch sizes (the sampler guarantees it)."""
    if world_size() == 1:
        return image, text, group_ids
    return (gather_with_grad(image), gather_with_grad(text),
            gather_no_grad(group_ids) if group_ids is not None else None)
