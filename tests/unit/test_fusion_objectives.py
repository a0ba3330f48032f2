"""Fusion objectives: BERT masking proportions and rules, hard negatives that follow the
similarities and never pick a positive, ITM labels, masked patches."""

import pytest
import torch

from polymodal.losses.fusion import (
    IGNORE,
    itm_targets,
    mask_patches,
    mask_tokens,
    masked_patch_loss,
    sample_hard_negatives,
)

PAD, CLS, SEP, MASK, VOCAB = 0, 101, 102, 103, 1000


def batch(rows: int = 400, length: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 - 800, 1000, (rows, length), generator=g)
    lengths = torch.randint(4, length + 1, (rows,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    return ids.masked_fill(~mask, PAD), mask


def test_bert_masking_chooses_15_percent_and_replaces_80_10_10() -> None:
    ids, mask = batch()
    inputs, labels = mask_tokens(ids, mask, MASK, VOCAB, special_ids=(CLS, SEP, PAD),
                                 generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    maskable = mask & (ids != CLS) & (ids != SEP)
    assert not (chosen & ~maskable).any()  # never padding or special tokens
    assert torch.equal(labels[chosen], ids[chosen])  # the label is the original token
    assert torch.equal(inputs[~chosen], ids[~chosen])  # what is not chosen is untouched
    assert 0.13 < chosen.sum() / maskable.sum() < 0.19
    replaced = inputs[chosen]
    share_mask = (replaced == MASK).float().mean()
    share_kept = (replaced == ids[chosen]).float().mean()
    assert 0.75 < share_mask < 0.85 and 0.06 < share_kept < 0.15
    assert chosen.any(dim=1).all()  # every row predicts something


def test_a_short_row_still_gets_one_masked_token() -> None:
    ids = torch.tensor([[CLS, 7, SEP, PAD], [CLS, SEP, PAD, PAD]])
    mask = ids != PAD
    _, labels = mask_tokens(ids, mask, MASK, VOCAB, special_ids=(CLS, SEP, PAD), probability=0.01,
                            generator=torch.Generator().manual_seed(0))
    assert labels[0].tolist() == [IGNORE, 7, IGNORE, IGNORE]
    assert (labels[1] == IGNORE).all()  # nothing maskable: nothing predicted
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(ids, mask, MASK, VOCAB, probability=1.0)


def test_hard_negatives_follow_the_similarities_and_skip_positives() -> None:
    similarity = torch.tensor([[9.0, 8.0, 0.0, 0.0],
                               [8.0, 9.0, 0.0, 0.0],
                               [0.0, 0.0, 9.0, 5.0],
                               [0.0, 6.0, 5.0, 9.0]])
    g = torch.Generator().manual_seed(0)
    draws = [sample_hard_negatives(similarity, generator=g) for _ in range(300)]
    texts = torch.stack([t for t, _ in draws])
    images = torch.stack([i for _, i in draws])
    assert not (texts == torch.arange(4)).any() and not (images == torch.arange(4)).any()
    assert (texts[:, 0] == 1).float().mean() > 0.99  # exp(8) against exp(0): the confusable caption
    assert (texts[:, 3] == 1).float().mean() > 0.6  # 6 against 5 and 0
    assert 0.8 < (images[:, 1] == 0).float().mean() < 0.95  # column 1: image 0 scores 8, image 3 6: p = 0.88
    # same group = positive: image 0's only allowed negatives are captions 2 and 3
    groups = torch.tensor([0, 0, 1, 2])
    grouped = torch.stack([sample_hard_negatives(similarity, groups, generator=g)[0] for _ in range(100)])
    assert set(grouped[:, 0].tolist()) <= {2, 3} and set(grouped[:, 1].tolist()) <= {2, 3}
    with pytest.raises(ValueError, match="no negative"):
        sample_hard_negatives(similarity[:2, :2], torch.tensor([5, 5]))
    # pairs marked not_negative (e.g. the same caption text) are never drawn either
    same_text = torch.zeros(4, 4, dtype=torch.bool)
    same_text[0, 1] = same_text[1, 0] = True
    excluded = [sample_hard_negatives(similarity, generator=g, not_negative=same_text) for _ in range(100)]
    assert all(t[0] != 1 and t[1] != 0 and i[0] != 1 and i[1] != 0 for t, i in excluded)
    # a high temperature flattens the draw: image 0 gets caption 1 about 1/3 of the time, not 99%
    flat = torch.stack([sample_hard_negatives(similarity, temperature=1e4, generator=g)[0] for _ in range(600)])
    assert 0.25 < (flat[:, 0] == 1).float().mean() < 0.42


def test_itm_targets_and_masked_patches() -> None:
    assert itm_targets(2).tolist() == [1, 1, 0, 0, 0, 0]
    tokens = torch.randn(3, 9, 8)
    masked, hidden = mask_patches(tokens, share=0.5, generator=torch.Generator().manual_seed(0))
    assert hidden.sum(dim=1).tolist() == [4, 4, 4] and not hidden[:, 0].any()
    assert (masked[hidden] == 0).all() and torch.equal(masked[~hidden], tokens[~hidden])
    target = torch.nn.functional.layer_norm(tokens, (8,))
    assert float(masked_patch_loss(target, tokens, hidden)) == pytest.approx(0.0, abs=1e-6)
    wrong = target.clone()
    wrong[~hidden] += 5  # errors where nothing was hidden do not count
    assert float(masked_patch_loss(wrong, tokens, hidden)) == pytest.approx(0.0, abs=1e-6)
    wrong[hidden] += 1
    assert float(masked_patch_loss(wrong, tokens, hidden)) == pytest.approx(1.0, abs=1e-5)
