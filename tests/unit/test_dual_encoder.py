import math

import pytest
import torch

from polymodal.models import DualEncoder, DualEncoderOutput
from tests.helpers import tiny_config


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2]])
    return torch.randn(3, 3, 16, 16), ids, (ids != 0).long()


def test_forward_always_returns_one_output_type() -> None:
    model = DualEncoder(tiny_config())
    images, ids, mask = _inputs()
    both = model(images=images, input_ids=ids, attention_mask=mask)
    image_only = model(images=images)
    text_only = model(input_ids=ids, attention_mask=mask)
    for out in (both, image_only, text_only):
        assert isinstance(out, DualEncoderOutput)
    assert both.image_embeds is not None and both.text_embeds is not None
    assert image_only.text_embeds is None and text_only.image_embeds is None
    torch.testing.assert_close(both.image_embeds, image_only.image_embeds)
    torch.testing.assert_close(both.text_embeds, text_only.text_embeds)
    torch.testing.assert_close(both.image_embeds.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="give images, input_ids, or both"):
        model()


def test_normalize_flag() -> None:
    model = DualEncoder(tiny_config())
    images, ids, mask = _inputs()
    raw = model.encode_image(images, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(model.encode_image(images), raw / raw.norm(dim=-1, keepdim=True))
    raw_text = model.encode_text(ids, mask, normalize=False)
    torch.testing.assert_close(model.encode_text(ids, mask), raw_text / raw_text.norm(dim=-1, keepdim=True))


def test_logit_scale_starts_at_clip_temperature_and_is_clamped() -> None:
    model = DualEncoder(tiny_config())
    images, _, _ = _inputs()
    assert model(images=images).logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model(images=images).logit_scale.item() == pytest.approx(100.0, rel=1e-5)


def test_logit_bias_exists_only_when_configured() -> None:
    images, _, _ = _inputs()
    assert DualEncoder(tiny_config())(images=images).logit_bias is None
    siglip = DualEncoder(tiny_config(init_logit_bias=-10.0, init_logit_scale=math.log(10)))
    out = siglip(images=images)
    assert out.logit_bias is not None and out.logit_bias.item() == -10.0
    assert out.logit_scale.item() == pytest.approx(10.0)


def test_locking_towers_through_the_model() -> None:
    model = DualEncoder(tiny_config())
    model.lock_text_tower()
    model.lock_image_tower(unlocked_groups=1)
    text_trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    assert text_trainable == {"head.weight"}
    assert model.visual.transformer.blocks[-1].attn.in_proj.weight.requires_grad
    assert not model.visual.transformer.blocks[0].attn.in_proj.weight.requires_grad
    images, ids, mask = _inputs()
    out = model(images=images, input_ids=ids, attention_mask=mask)
    (out.image_embeds @ out.text_embeds.T).sum().backward()
    assert model.text.token_embed.weight.grad is None
    assert model.text.head.weight.grad is not None


def test_gradient_checkpointing_switch_keeps_results() -> None:
    model = DualEncoder(tiny_config()).train()
    images, ids, mask = _inputs()

    def run() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(images=images, input_ids=ids, attention_mask=mask)
        (out.logit_scale * out.image_embeds @ out.text_embeds.T).logsumexp(1).sum().backward()
        return out.image_embeds, out.text_embeds, [p.grad.clone() for p in model.parameters()]

    before = run()
    model.set_grad_checkpointing(True)
    assert all(t.grad_checkpointing for t in (model.visual.transformer, model.text.transformer))
    after = run()
    torch.testing.assert_close(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])
    for a, b in zip(before[2], after[2], strict=True):
        torch.testing.assert_close(a, b)
