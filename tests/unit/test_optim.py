import copy
import math

import pytest
import torch

from polymodal.models import DualEncoder
from polymodal.train.config import OptimSection
from polymodal.train.optim import (
    build_optimizer,
    build_scheduler,
    fused_adamw_applies,
    load_optimizer_state,
    parameter_groups,
    warmup_cosine,
)
from tests.helpers import tiny_config


def test_no_weight_decay_on_norms_biases_embeddings_and_temperature() -> None:
    model = DualEncoder(tiny_config())
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"logit_scale", "visual.cls_token", "visual.pos_embed.weight", "text.token_embed.weight",
            "text.pos_embed.weight", "visual.norm.weight", "visual.norm.bias"} <= kept
    assert "visual.transformer.blocks.0.attn.in_proj.bias" in kept
    assert {"visual.transformer.blocks.0.attn.in_proj.weight", "visual.patch_embed.weight",
            "text.head.weight"} <= decayed
    assert decayed.isdisjoint(kept) and len(decayed | kept) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out() -> None:
    model = DualEncoder(tiny_config())
    model.lock_text_tower()
    groups = parameter_groups(model, 0.1)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert id(model.text.token_embed.weight) not in in_groups and id(model.text.head.weight) in in_groups


def test_warmup_then_cosine() -> None:
    f = warmup_cosine(warmup_steps=10, total_steps=111, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # step 110 is the last
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_drives_the_optimiser() -> None:
    model = DualEncoder(tiny_config())
    cfg = OptimSection(lr=1e-3, warmup_steps=4)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[3] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the last step runs at the end of the cosine
    assert lrs[-2] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 14 / 15)))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.98)


def test_optimizer_is_fused_where_torch_allows_and_steps_like_the_reference() -> None:
    torch.manual_seed(0)
    model = DualEncoder(tiny_config())
    reference = copy.deepcopy(model)
    cfg = OptimSection(lr=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg)
    assert optimizer.defaults["fused"] is True  # a CPU model of float parameters
    slow = torch.optim.AdamW(parameter_groups(reference, 0.1), lr=1e-2, betas=cfg.betas, eps=cfg.eps, foreach=False)
    for _ in range(3):
        for m in (model, reference):
            for p in m.parameters():
                p.grad = torch.ones_like(p) * 0.01 + p.detach() * 0.1
        optimizer.step()
        slow.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_adamw_is_not_used_where_torch_has_no_kernel() -> None:
    assert fused_adamw_applies([torch.zeros(2), torch.zeros(3, 3)])
    assert not fused_adamw_applies([torch.zeros(2), torch.zeros(2, device="meta")])  # two kinds of device
    assert not fused_adamw_applies([torch.zeros(2, device="meta")])  # no fused kernel there
    assert not fused_adamw_applies([torch.zeros(2, dtype=torch.int64)])


def test_resuming_an_unfused_checkpoint_keeps_the_fused_kernel_and_the_trajectory() -> None:
    torch.manual_seed(0)
    model = DualEncoder(tiny_config())
    params = [p for p in model.parameters()]
    old = torch.optim.AdamW(params, lr=1e-2, foreach=True)  # as checkpoints were written before
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    old.step()
    resumed_model = copy.deepcopy(model)
    resumed = torch.optim.AdamW(list(resumed_model.parameters()), lr=1e-2, fused=True)
    load_optimizer_state(resumed, copy.deepcopy(old.state_dict()))
    assert resumed.param_groups[0]["fused"] is True  # torch alone would restore None
    for m, opt in ((model, old), (resumed_model, resumed)):
        for p in m.parameters():
            p.grad = torch.full_like(p, -0.02)
        opt.step()
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
