"""Gradient caching: the gradients of the full-batch loss, whatever the chunking."""

import pytest
import torch

from polymodal.config import TokenizerConfig
from polymodal.data.loader import Batch
from polymodal.inference import TextFeatureCache
from polymodal.losses import ClipLoss, SigLipLoss, TripletLoss, VSEppLoss
from polymodal.losses.base import ImageTextLoss
from polymodal.models import DualEncoder
from polymodal.tokenizer import Tokenizer, train_bpe
from polymodal.train.step import backward_step
from polymodal.train.task import ContrastiveTask
from tests.helpers import tiny_config

CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "black") for s in ("cat", "dog", "bird")]


def _setup(cache: bool) -> tuple[ContrastiveTask, Batch]:
    torch.manual_seed(0)
    model = DualEncoder(tiny_config(init_logit_bias=-5.0))
    tokenizer = Tokenizer(train_bpe(CAPTIONS * 3, 300, min_frequency=1), 12, TokenizerConfig())
    text_cache = None
    if cache:
        model.lock_text_tower()
        text_cache = TextFeatureCache(model.text, tokenizer, CAPTIONS)
    g = torch.Generator().manual_seed(1)
    batch = Batch(pixels=torch.randn(12, 3, 16, 16, generator=g), caption_ids=torch.randperm(12, generator=g),
                  groups=torch.tensor([0, 1, 2, 3, 2, 5, 6, 7, 6, 9, 2, 0]), indices=torch.arange(12), skipped=[])
    return ContrastiveTask(model, tokenizer, CAPTIONS, text_cache), batch


def _grads(task: ContrastiveTask) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_fn", [ClipLoss(), SigLipLoss(), TripletLoss(mining="hard"),
                                     TripletLoss(mining="semi-hard"), TripletLoss(mining="all"), VSEppLoss()],
                         ids=["clip", "siglip", "triplet-hard", "triplet-semi-hard", "triplet-all", "vsepp"])
@pytest.mark.parametrize("cache", [False, True], ids=["tokenized", "cached-text"])
def test_chunked_gradients_equal_the_full_batch(loss_fn: ImageTextLoss, cache: bool) -> None:
    task, batch = _setup(cache)
    full_loss = backward_step(task, loss_fn, batch, chunks=1)
    full = _grads(task)
    for chunks in (3, 5):  # 5 does not divide 12: chunks of 3, 3, 2, 2, 2
        task.model.zero_grad(set_to_none=True)
        loss = backward_step(task, loss_fn, batch, chunks=chunks)
        assert loss == pytest.approx(full_loss, rel=1e-6)
        chunked = _grads(task)
        assert chunked.keys() == full.keys()
        uses_scale = isinstance(loss_fn, ClipLoss | SigLipLoss)  # margin losses have no temperature
        assert ("logit_scale" in chunked) == uses_scale
        for name, grad in full.items():
            torch.testing.assert_close(chunked[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    if cache:
        assert not any(n.startswith("text.") and not n.startswith("text.head") for n in full)


def test_summing_chunk_losses_would_not_be_the_same() -> None:
    """Why gradient caching exists: per-chunk contrastive losses see fewer negatives."""
    task, batch = _setup(cache=False)
    loss_fn = ClipLoss()
    full = backward_step(task, loss_fn, batch, chunks=1)
    halves = [loss_fn(task(batch.pixels[s], batch.caption_ids[s]), batch.groups[s]).item()
              for s in (slice(0, 6), slice(6, 12))]
    assert abs(sum(halves) / 2 - full) > 1e-3
