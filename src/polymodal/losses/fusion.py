"""The objectives of fusion models, as pure functions of tensors (no model inside).

- `mask_tokens`: BERT's masking for masked language modelling conditioned on the image
  (Devlin et al. 2019): 15% of the real, non-special tokens are chosen; of those 80%
  become [MASK], 10% a random token, 10% stay; only chosen tokens are predicted.
- `sample_hard_negatives`: ALBEF's image-text matching negatives (Li et al. 2021): for
  every image a caption of another image, drawn with probability softmax(similarity)
  from the dual encoder's scores, so that confusable pairs are the ones ITM learns from;
  and the same for every caption. Pairs of the same group are never negatives.
- `itm_targets`: labels of a batch laid out as [positives; image-hard; text-hard].
- `mask_patches` / `masked_patch_loss`: masked patch modelling: hide a share of the image
  tokens and regress their (normalised) features from the fused states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from polymodal.losses.base import positive_mask

IGNORE = -100  # the label cross_entropy skips


def mask_tokens(ids: Tensor, attention_mask: Tensor, mask_token_id: int, vocab_size: int,
                special_ids: tuple[int, ...] = (), probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(inputs, labels): `labels` hold the original id where a token was chosen, IGNORE
    elsewhere. Every row with a maskable token gets at least one chosen."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    maskable = attention_mask.bool() & ~torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype, device=ids.device))
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = maskable & (draw < probability)
    # a row where nothing was chosen gets its maskable token of the smallest draw
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)
    if bool(empty.any()):
        forced = draw.masked_fill(~maskable, 2.0).argmin(dim=1)
        chosen[empty, forced[empty]] = True
    labels = ids.masked_fill(~chosen, IGNORE)
    kind = torch.rand(ids.shape, generator=generator, device=ids.device)
    inputs = ids.clone()
    inputs[chosen & (kind < 0.8)] = mask_token_id
    random_slot = chosen & (kind >= 0.8) & (kind < 0.9)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs[random_slot] = random_ids[random_slot]
    return inputs, labels


def sample_hard_negatives(similarity: Tensor, group_ids: Tensor | None = None, temperature: float = 1.0,
                          generator: torch.Generator | None = None,
                          not_negative: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(text_for_image, image_for_text): for image i the index of a negative caption, for
    caption j the index of a negative image, sampled with weights softmax(sim / T) over
    the batch's non-positives. `similarity` is (images, captions) of one batch, row i
    and column i being a positive pair, as logits: cosines times the dual encoder's logit
    scale (ALBEF: cosine / 0.07); raw cosines would make the draw nearly uniform, i.e.
    not hard. `not_negative` (B, B) marks further pairs that must not be drawn, e.g. an
    image with another image's identical caption. A row with no negative at all raises."""
    n = similarity.shape[0]
    if similarity.shape != (n, n) or n < 2:
        raise ValueError(f"similarity must be a square (B, B) matrix with B >= 2, got {tuple(similarity.shape)}")
    positives = positive_mask(group_ids, n, similarity.device)
    if not_negative is not None:
        positives = positives | not_negative.to(positives.device)
    if bool(positives.all(dim=1).any()):
        raise ValueError("a row has no negative: every pair in the batch shares its group")
    logits = (similarity.detach().float() / temperature).masked_fill(positives, float("-inf"))
    text_for_image = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    image_for_text = torch.multinomial(logits.t().softmax(dim=1), 1, generator=generator).squeeze(1)
    return text_for_image, image_for_text


def itm_targets(batch: int, device: torch.device | None = None) -> Tensor:
    """Labels of ITM logits computed on [B positive pairs; B (image, hard caption); B (hard
    image, caption)]: 1 = match, 0 = mismatch."""
    return torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(device)


def mask_patches(tokens: Tensor, share: float = 0.4, keep_first: bool = True,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(masked tokens, which) : a share of the image tokens zeroed (the class token kept
    when `keep_first`); `which` (B, M) is True where a token was hidden."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    b, m, _ = tokens.shape
    scores = torch.rand(b, m, generator=generator, device=tokens.device)
    if keep_first:
        scores[:, 0] = 2.0  # never among the smallest
    count = max(1, round(share * (m - int(keep_first))))
    hidden = torch.zeros(b, m, dtype=torch.bool, device=tokens.device)
    hidden.scatter_(1, scores.argsort(dim=1)[:, :count], True)
    return tokens.masked_fill(hidden[..., None], 0.0), hidden


def masked_patch_loss(predicted: Tensor, target: Tensor, hidden: Tensor) -> Tensor:
    """Mean squared error between predicted and layer-normalised target features, over the
    hidden tokens only (normalised targets as in MAE's best variant: scale-free)."""
    target = F.layer_norm(target.detach().float(), target.shape[-1:])
    errors = (predicted.float() - target).pow(2).mean(dim=-1)
    return errors[hidden].mean()
