"""One optimisation step's gradients, with or without gradient caching.

Plain accumulation (summing the losses of micro-batches) is wrong for contrastive
losses: each micro-batch would only see its own negatives. Gradient caching (Gao et
al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup")
gets the gradients of the full-batch loss with the memory of one chunk:

  1. embed every chunk without a graph,
  2. compute the loss on all embeddings and backpropagate to the embeddings only,
  3. re-embed each chunk with a graph and backpropagate the cached embedding gradients.

Step 3 must reproduce step 1 exactly: the towers have no dropout, augmentation happens
in the data loader, and a forward pass multiplies alike with and without gradients
(models/linear.py), so they do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polymodal.data.loader import Batch
from polymodal.inference import autocast, model_device
from polymodal.losses import ImageTextLoss
from polymodal.models.dual_encoder import DualEncoderOutput
from polymodal.train.task import ContrastiveTask


def backward_step(task: ContrastiveTask, loss_fn: ImageTextLoss, batch: Batch, chunks: int = 1,
                  dtype: torch.dtype | None = None) -> float:
    """Accumulate into .grad the gradients of the loss on the whole batch; returns it."""
    device = model_device(task.model)
    groups = batch.groups.to(device)
    if chunks == 1:
        with autocast(device, dtype):
            output = task(batch.pixels, batch.caption_ids)
        loss = loss_fn(output, groups)
        loss.backward()
        return float(loss.item())

    pieces = torch.arange(len(batch)).chunk(chunks)
    with torch.no_grad(), autocast(device, dtype):
        outputs = [task(batch.pixels[p], batch.caption_ids[p]) for p in pieces]
    image = _leaf(torch.cat([_image(o) for o in outputs]))
    text = _leaf(torch.cat([_text(o) for o in outputs]))
    scale, bias = task.model.logit_params()
    loss = loss_fn(DualEncoderOutput(image, text, scale, bias), groups)
    loss.backward()  # gradients of the embeddings (cached), the scale and the bias
    assert image.grad is not None and text.grad is not None
    for p in pieces:
        with autocast(device, dtype):
            output = task(batch.pixels[p], batch.caption_ids[p])
        torch.autograd.backward([_image(output).float(), _text(output).float()],
                                [image.grad[p.to(device)], text.grad[p.to(device)]])
    return float(loss.item())


def _leaf(t: Tensor) -> Tensor:
    return t.detach().float().requires_grad_(True)


def _image(output: DualEncoderOutput) -> Tensor:
    assert output.image_embeds is not None
    return output.image_embeds


def _text(output: DualEncoderOutput) -> Tensor:
    assert output.text_embeds is not None
    return output.text_embeds
