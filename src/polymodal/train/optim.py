"""AdamW with decoupled weight decay on weight matrices only, and the learning-rate
schedule (linear warm-up, then cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from polymodal.models.layers import LearnedPositionalEmbedding, LearnedPositionalEmbedding2D
from polymodal.train.config import OptimSection

_EMBEDDINGS = (nn.Embedding, LearnedPositionalEmbedding, LearnedPositionalEmbedding2D)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups. No decay on biases, norm scales, embeddings (token, position,
    class token) or the temperature: decaying them only pulls useful values to zero
    (as in CLIP, open_clip and timm); it applies to weight matrices and convolutions."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, _EMBEDDINGS)
                    for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in no_decay_ids or name.endswith("cls_token"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`; torch's fused kernel where every parameter allows it
    (one pass per tensor instead of a dozen; BENCHMARKS.md, "Training step"), the
    multi-tensor one otherwise."""
    groups = parameter_groups(model, cfg.weight_decay)
    params = [p for group in groups for p in group["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused_adamw_applies(params))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping the kernel choice this optimizer was built
    with: torch restores each group's saved `fused` flag, so a checkpoint from before fused
    AdamW (or from another device) would otherwise resume on the slower kernel. Fused steps
    keep their step counts as float32 on the parameter's device."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flag in zip(optimizer.param_groups, fused, strict=True):
        group["fused"] = flag
        for p in group["params"] if flag else ():
            saved = optimizer.state.get(p, {})
            if isinstance(saved.get("step"), torch.Tensor):
                saved["step"] = saved["step"].to(device=p.device, dtype=torch.float32)


def fused_adamw_applies(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating point, all on one kind
    of device it has kernels for (the CPU, CUDA)."""
    kinds = {p.device.type for p in params}
    return len(kinds) == 1 and kinds <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the base learning rate at step s (0-based): (s+1)/warmup during
    warm-up, then a half cosine from 1 down to `min_ratio` at the last step (total - 1)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - 1 - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimSection, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(cfg.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total_steps, cfg.min_lr_ratio))
