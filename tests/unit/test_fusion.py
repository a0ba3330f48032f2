"""Fusion encoders (cross-attention and single stream) and their heads: shapes, masks
(padding is never attended to), the image actually being read, and clear errors."""

import pytest
import torch

from polymodal.config import FusionConfig, TransformerConfig
from polymodal.errors import ConfigError
from polymodal.models.fusion import FusionEncoder, ITMHead, MLMHead, VQAHead
from polymodal.models.layers import capture_attention

B, L, M, VOCAB, WIDTH, IMAGE_WIDTH = 3, 7, 5, 50, 32, 24


def config(kind: str, **overrides: object) -> FusionConfig:
    values: dict = dict(kind=kind, vocab_size=VOCAB, context_length=10, image_tokens=M, image_width=IMAGE_WIDTH,
                        transformer=TransformerConfig(width=WIDTH, layers=2, heads=4), num_answers=6)
    values.update(overrides)
    return FusionConfig(**values)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (B, L), generator=g)
    lengths = torch.tensor([L, 4, 2])
    text_mask = torch.arange(L)[None] < lengths[:, None]
    ids[~text_mask] = 0
    image = torch.randn(B, M, IMAGE_WIDTH, generator=g)
    image_mask = torch.ones(B, M, dtype=torch.bool)
    image_mask[1, 3:] = False  # a padded image sequence (fewer tokens than the longest)
    return ids, text_mask, image, image_mask


@pytest.mark.parametrize("kind", ["cross", "single"])
def test_every_head_has_the_documented_shape(kind: str) -> None:
    cfg = config(kind)
    encoder = FusionEncoder(cfg).eval()
    ids, text_mask, image, image_mask = inputs()
    out = encoder(ids, text_mask, image, image_mask)
    assert out.text.shape == (B, L, WIDTH) and out.pooled.shape == (B, WIDTH)
    assert torch.equal(out.pooled, out.text[:, 0])
    assert (out.image is None) if kind == "cross" else (out.image is not None and out.image.shape == (B, M, WIDTH))
    assert ITMHead(cfg)(out.pooled).shape == (B, 2)
    mlm = MLMHead(cfg, encoder.token_embed)
    assert mlm(out.text).shape == (B, L, VOCAB) and mlm.decoder.weight is encoder.token_embed.weight
    assert VQAHead(cfg)(out.pooled).shape == (B, 6)
    untied = MLMHead(config(kind, tie_word_embeddings=False), encoder.token_embed)
    assert untied.decoder.weight is not encoder.token_embed.weight


@pytest.mark.parametrize("kind", ["cross", "single"])
def test_padding_is_never_attended_to(kind: str) -> None:
    encoder = FusionEncoder(config(kind)).eval()
    ids, text_mask, image, image_mask = inputs()
    noisy_ids, noisy_image = ids.clone(), image.clone()
    noisy_ids[~text_mask] = torch.randint(2, VOCAB, (int((~text_mask).sum()),))
    noisy_image[~image_mask] = 100 * torch.randn(int((~image_mask).sum()), IMAGE_WIDTH)
    with torch.no_grad():
        clean = encoder(ids, text_mask, image, image_mask)
        noisy = encoder(noisy_ids, text_mask, noisy_image, image_mask)
    real = text_mask[..., None].expand_as(clean.text)
    torch.testing.assert_close(clean.text[real], noisy.text[real], atol=1e-5, rtol=1e-5)
    with torch.no_grad(), capture_attention(encoder) as weights:
        encoder(ids, text_mask, image, image_mask)
    keys_mask = text_mask if kind == "cross" else torch.cat([text_mask, image_mask], dim=1)
    for name, calls in weights.items():
        (w,) = calls  # (B, H, N, K)
        allowed = image_mask if "cross_attn" in name else keys_mask
        assert float(w.masked_select(~allowed[:, None, None, :]).abs().max()) == 0.0, name
    assert any("cross_attn" in n for n in weights) == (kind == "cross")


@pytest.mark.parametrize("kind", ["cross", "single"])
def test_the_text_states_depend_on_the_image(kind: str) -> None:
    encoder = FusionEncoder(config(kind)).eval()
    ids, text_mask, image, _ = inputs()
    with torch.no_grad():
        a = encoder(ids, text_mask, image).pooled
        b = encoder(ids, text_mask, image.flip(0)).pooled  # each text with another image
    assert (a - b).abs().max() > 1e-3


def test_bad_inputs_and_configs_are_clear() -> None:
    encoder = FusionEncoder(config("cross"))
    ids, text_mask, image, _ = inputs()
    with pytest.raises(ValueError, match="must be \\(B=3, M, 24\\)"):
        encoder(ids, text_mask, image[..., :10])
    with pytest.raises(ValueError, match="exceed the context length"):
        encoder(torch.zeros(B, 11, dtype=torch.long), torch.ones(B, 11), image)
    with pytest.raises(ValueError, match="exceed the configured 5"):
        encoder(ids, text_mask, torch.zeros(B, 6, IMAGE_WIDTH))
    with pytest.raises(ValueError, match="num_answers"):
        VQAHead(config("cross", num_answers=0))
    with pytest.raises(ConfigError, match="pad and mask"):
        config("single", mask_token_id=0)
