import dataclasses

import pytest

from polymodal.config import (
    AugmentConfig,
    DualEncoderConfig,
    HFTextConfig,
    PreprocessConfig,
    ResNetConfig,
    TextTransformerConfig,
    TransformerConfig,
    ViTConfig,
    from_dict,
    to_dict,
)
from polymodal.errors import ConfigError
from polymodal.registry import get_preset, list_presets, preset_dict
from tests.helpers import tiny_config


def test_every_preset_round_trips_through_dicts() -> None:
    for name in list_presets():
        config = get_preset(name)
        assert from_dict(DualEncoderConfig, to_dict(config)) == config


def test_presets_cover_the_required_architectures() -> None:
    kinds = {(type(get_preset(n).vision), type(get_preset(n).text)) for n in list_presets()}
    assert (ViTConfig, TextTransformerConfig) in kinds
    assert (ViTConfig, HFTextConfig) in kinds
    assert (ResNetConfig, TextTransformerConfig) in kinds
    assert (ResNetConfig, HFTextConfig) in kinds
    clip = get_preset("clip-vit-b-32")
    assert (clip.vision.image_size, clip.vision.patch_size, clip.embed_dim) == (224, 32, 512)


def test_unknown_key_is_rejected_with_its_name_and_the_valid_keys() -> None:
    data = preset_dict("vit-tiny-64")
    data["vision"]["transformer"]["widht"] = 3
    with pytest.raises(ConfigError, match=r"vision\.transformer: unknown key\(s\) \['widht'\].*width"):
        from_dict(DualEncoderConfig, data)


def test_wrong_kind_names_the_choices() -> None:
    data = preset_dict("vit-tiny-64")
    data["vision"]["kind"] = "swin"
    with pytest.raises(ConfigError, match="kind must be one of .*resnet.*vit"):
        from_dict(DualEncoderConfig, data)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("vision", "pool"), "max", "not one of"),
    (("vision", "patch_size"), "8", "expected an integer"),
    (("vision", "pre_norm"), 1, "expected true/false"),
    (("embed_dim",), 2.5, "expected an integer"),
    (("preprocess", "mean"), [0.5, 0.5], "expected 3 values"),
])
def test_bad_values_are_rejected(path: tuple[str, ...], value: object, message: str) -> None:
    data = preset_dict("vit-tiny-64")
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        from_dict(DualEncoderConfig, data)


def test_missing_required_key_is_an_error() -> None:
    data = preset_dict("vit-tiny-64")
    del data["vision"]["patch_size"]
    with pytest.raises(ConfigError, match="patch_size"):
        from_dict(DualEncoderConfig, data)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: TransformerConfig(width=30, layers=1, heads=4), "not divisible by heads"),
    (lambda: ViTConfig(image_size=30, patch_size=8, transformer=TransformerConfig(32, 1, 4)),
     "not a multiple of patch_size"),
    (lambda: ResNetConfig(image_size=20), "divisible by 16"),
    (lambda: ResNetConfig(image_size=64, widths=(32, 64), depths=(1,)), "same length"),
    (lambda: TextTransformerConfig(vocab_size=10, context_length=8, transformer=TransformerConfig(32, 1, 4),
                                   eot_token_id=10), "inside the vocabulary"),
    (lambda: TextTransformerConfig(vocab_size=10, context_length=8, transformer=TransformerConfig(12, 1, 4),
                                   pos_embed="rotary"), "even head dim"),
    (lambda: tiny_config(preprocess=PreprocessConfig(image_size=32)), "!= preprocess.image_size"),
    (lambda: PreprocessConfig(image_size=32, resize_size=16), "resize_size"),
    (lambda: AugmentConfig(scale=(0.9, 0.5)), "scale"),
    (lambda: ViTConfig(image_size=32, patch_size=0, transformer=TransformerConfig(32, 1, 4)), "must be > 0"),
    (lambda: ResNetConfig(image_size=64, norm_groups=0), "must be > 0"),
    (lambda: TextTransformerConfig(vocab_size=10, context_length=2, transformer=TransformerConfig(32, 1, 4)),
     "context_length >= 3"),
    (lambda: TextTransformerConfig(vocab_size=10, context_length=8, transformer=TransformerConfig(32, 1, 4),
                                   pool="first"), "causal = false"),
    (lambda: HFTextConfig(context_length=1), "context_length"),
    (lambda: AugmentConfig(hue=0.7), "hue"),
])
def test_invalid_combinations_fail_when_the_config_is_built(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        build()


def test_configs_are_frozen() -> None:
    config = tiny_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embed_dim = 3  # type: ignore[misc]


def test_unknown_preset_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="did you mean vit-tiny-64"):
        get_preset("vit-tiny-46")


def test_kind_is_only_accepted_where_it_means_something() -> None:
    data = preset_dict("vit-tiny-64")
    data["preprocess"]["kind"] = "vit"
    with pytest.raises(ConfigError, match=r"preprocess: unknown key\(s\) \['kind'\]"):
        from_dict(DualEncoderConfig, data)
