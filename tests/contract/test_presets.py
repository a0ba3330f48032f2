"""Contract tests over every registered preset and every option of the model config
(timm's tests/test_models.py): builds, runs forward and backward, every parameter gets a
finite, non-zero gradient, and no output is NaN."""

import dataclasses
import typing

import pytest
import torch

from polymodal.config import (
    DualEncoderConfig,
    HFTextConfig,
    PreprocessConfig,
    ResNetConfig,
    TextTransformerConfig,
    TransformerConfig,
    ViTConfig,
)
from polymodal.factory import create_model, get_tokenizer
from polymodal.losses import ClipLoss, SigLipLoss
from polymodal.models import DualEncoder
from polymodal.registry import get_preset, list_presets
from tests.helpers import tiny_config, tiny_transformer


def _text_inputs(model: DualEncoder, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config.text
    if isinstance(cfg, HFTextConfig):
        texts = ["a red apple", "two dogs playing on a sunny beach", "x"][:batch]
        tokens = get_tokenizer(model.config)(texts)
        return tokens.input_ids, tokens.attention_mask
    ids = torch.randint(3, cfg.vocab_size, (batch, 6))
    mask = torch.ones_like(ids)
    ids[:, -1] = cfg.eot_token_id
    ids[0, 3], ids[0, 4:], mask[0, 4:] = cfg.eot_token_id, 0, 0  # the first text is padded
    return ids, mask


def _check_forward_backward(model: DualEncoder, batch: int = 2) -> None:
    model.train()
    size = model.config.preprocess.image_size
    images = torch.randn(batch, 3, size, size)
    ids, mask = _text_inputs(model, batch)
    out = model(images=images, input_ids=ids, attention_mask=mask)
    assert out.image_embeds is not None and out.text_embeds is not None
    assert out.image_embeds.shape == out.text_embeds.shape == (batch, model.config.embed_dim)
    assert torch.isfinite(out.image_embeds).all() and torch.isfinite(out.text_embeds).all()
    # SigLIP trains the bias; the softmax of CLIP's loss is blind to a shared bias.
    loss = (SigLipLoss() if out.logit_bias is not None else ClipLoss())(out)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]  # type: ignore[arg-type]
    assert not bad, f"non-finite gradients: {bad[:10]}"


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_trains(name: str) -> None:
    model = create_model(name, device="cpu")
    _check_forward_backward(model)


_T = tiny_transformer()
_VIT = ViTConfig(image_size=16, patch_size=4, transformer=_T)
_TEXT = TextTransformerConfig(vocab_size=300, context_length=12, transformer=_T)
VARIANTS = {
    "vit-mean-pool": dict(vision=dataclasses.replace(_VIT, pool="mean")),
    "vit-learned-2d": dict(vision=dataclasses.replace(_VIT, pos_embed="learned_2d")),
    "vit-sincos-2d-mean": dict(vision=dataclasses.replace(_VIT, pos_embed="sincos_2d", pool="mean")),
    "vit-no-pre-norm": dict(vision=dataclasses.replace(_VIT, pre_norm=False)),
    "vit-patch-bias": dict(vision=dataclasses.replace(_VIT, patch_bias=True)),
    "vit-mlp-head": dict(vision=dataclasses.replace(_VIT, proj="mlp", proj_bias=True)),
    "vit-no-projection": dict(embed_dim=32, vision=dataclasses.replace(_VIT, proj="none")),
    "vit-layer-scale-quick-gelu": dict(vision=dataclasses.replace(
        _VIT, transformer=tiny_transformer(layer_scale_init=0.1, act="quick_gelu"))),
    "text-bidirectional-mean": dict(text=dataclasses.replace(_TEXT, causal=False, pool="mean")),
    "text-first-token": dict(text=dataclasses.replace(_TEXT, causal=False, pool="first")),
    "text-sinusoidal": dict(text=dataclasses.replace(_TEXT, pos_embed="sinusoidal")),
    "text-rotary": dict(text=dataclasses.replace(_TEXT, pos_embed="rotary")),
    "text-mlp-head-bias": dict(text=dataclasses.replace(_TEXT, proj="mlp", proj_bias=True)),
    "text-no-projection": dict(embed_dim=32, text=dataclasses.replace(_TEXT, proj="none")),
    "resnet": dict(vision=ResNetConfig(image_size=16, widths=(8, 16), depths=(1, 2), norm_groups=4)),
    "resnet-mlp-head": dict(vision=ResNetConfig(image_size=16, widths=(8, 16), depths=(1, 1), norm_groups=4,
                                                proj="mlp", proj_bias=True)),
    "resnet-no-projection": dict(embed_dim=16, text=dataclasses.replace(_TEXT, proj="mlp"),
                                 vision=ResNetConfig(image_size=16, widths=(8, 16), depths=(1, 1),
                                                     norm_groups=4, proj="none")),
    "hf-text-cls-pool": dict(text=HFTextConfig(pool="cls", context_length=16, proj="mlp", proj_bias=True)),
    "hf-text-mean-linear": dict(text=HFTextConfig(pool="mean", context_length=16)),
    "hf-text-no-projection": dict(embed_dim=384, text=HFTextConfig(context_length=16, proj="none"),
                                  vision=dataclasses.replace(_VIT, proj="mlp")),
    "siglip-bias": dict(init_logit_bias=-10.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_config_option_trains(variant: str) -> None:
    config: DualEncoderConfig = tiny_config(**VARIANTS[variant])
    _check_forward_backward(DualEncoder(config), batch=3)


def test_variants_cover_every_choice_and_flag() -> None:
    """A new option added to a tower config must get a variant above."""
    seen: dict[str, set[object]] = {}
    for overrides in VARIANTS.values():
        config = tiny_config(**overrides)
        for tower in (config.vision, config.text):
            for field in dataclasses.fields(tower):
                seen.setdefault(f"{type(tower).__name__}.{field.name}", set()).add(getattr(tower, field.name))
    for cls in (ViTConfig, ResNetConfig, TextTransformerConfig, HFTextConfig):
        for name, hint in typing.get_type_hints(cls).items():
            key = f"{cls.__name__}.{name}"
            if name == "hf_config":
                continue
            if typing.get_origin(hint) is typing.Literal:
                assert set(typing.get_args(hint)) <= seen[key], key
            elif hint is bool:
                assert seen[key] == {True, False}, key


def test_preset_shapes_are_what_their_names_say() -> None:
    assert get_preset("vit-tiny-64").vision.image_size == 64
    assert get_preset("vit-small-128").vision.image_size == 128
    assert isinstance(get_preset("resnet-small-64").vision, ResNetConfig)
    assert isinstance(get_preset("vit-tiny-64-minilm").text, HFTextConfig)
    assert PreprocessConfig(image_size=64) == get_preset("vit-tiny-64").preprocess
    assert isinstance(get_preset("clip-vit-b-32").vision.transformer, TransformerConfig)
