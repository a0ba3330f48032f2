"""The losses of one fusion-model batch: the joint pre-training objective and VQA.

    image = model.image_tokens(pixels)  # (B, M, W): computed once, shared with the dual encoder's loss
    losses = joint_losses(model, image, tokens, similarity, groups)   # {"itm", "mlm", ["mpm"]}
    total = sum(weights[k] * v for k, v in losses.items())
    loss = vqa_loss(model, pixels, question_tokens, answers)

`similarity` is the (B, B) image-caption score matrix of the batch from a dual encoder:
ITM's hard negatives are drawn from it (ALBEF). Token ids follow polymodal's tokenizers:
<pad> 0, <sot> 1, <eot> 2, and the model's `mask_token_id` for MLM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.losses.fusion import (
    IGNORE,
    itm_targets,
    mask_patches,
    mask_tokens,
    masked_patch_loss,
    sample_hard_negatives,
)
from polymodal.models.fusion import FusionModel
from polymodal.tokenizer import TokenBatch


def joint_losses(model: FusionModel, image: Tensor, tokens: TokenBatch, similarity: Tensor,
                 groups: Tensor | None = None, special_ids: tuple[int, ...] = (0, 1, 2),
                 generator: torch.Generator | None = None, mask_share: float = 0.4,
                 negative_temperature: float = 1.0) -> dict[str, Tensor]:
    """Image-text matching with hard negatives, masked language modelling conditioned on
    the image, and (single stream) masked patch modelling. `image` holds the vision tower's
    tokens of the batch's images (B, M, W), so that a caller training the tower with another
    loss too runs it once. ITM's negatives are drawn from softmax(similarity /
    `negative_temperature`)."""
    ids, mask = tokens.input_ids, tokens.attention_mask
    batch = ids.shape[0]

    # ITM: [positives; each image with a confusable caption; each caption with a confusable image].
    # Two images with the very same caption are no negatives of each other: the label would be
    # wrong for one of them (short captions repeat: "a dog", an emoji name used twice).
    same_text = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)
    text_for_image, image_for_text = sample_hard_negatives(similarity, groups, negative_temperature,
                                                           generator=generator, not_negative=same_text)
    pair_ids = torch.cat([ids, ids[text_for_image], ids])
    pair_mask = torch.cat([mask, mask[text_for_image], mask])
    pair_image = torch.cat([image, image, image[image_for_text]])
    itm_logits = model.itm(model.fuse(pair_ids, pair_mask, pair_image).pooled)
    losses = {"itm": F.cross_entropy(itm_logits.float(), itm_targets(batch, ids.device))}

    # MLM: predict the masked words from the rest of the caption and the image
    cfg = model.cfg
    masked_ids, labels = mask_tokens(ids, mask, cfg.mask_token_id, cfg.vocab_size,
                                     (*special_ids, cfg.pad_token_id), generator=generator)
    mlm_logits = model.mlm(model.fuse(masked_ids, mask, image).text)
    losses["mlm"] = F.cross_entropy(mlm_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)

    if model.mpm is not None:  # the single stream updates image tokens: regress the hidden ones
        hidden_image, hidden = mask_patches(image, mask_share, generator=generator)
        fused = model.fuse(ids, mask, hidden_image)
        assert fused.image is not None
        losses["mpm"] = masked_patch_loss(model.mpm(fused.image), image, hidden)
    return losses


def vqa_loss(model: FusionModel, pixels: Tensor, questions: TokenBatch, answers: Tensor) -> Tensor:
    """Cross-entropy of the answer classes (one answer per question)."""
    logits = model.answer_logits(questions.input_ids, questions.attention_mask, model.image_tokens(pixels))
    return F.cross_entropy(logits.float(), answers)
