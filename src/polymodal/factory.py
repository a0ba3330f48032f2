"""Build, load and prepare models: the four functions most code needs.

    model = create_model("vit-tiny-64-minilm")      # a preset, a JSON file or a config
    model = load_model("runs/emoji/model")          # a polymodal or HF CLIP directory
    tokenizer = get_tokenizer("runs/emoji/model")
    transform = get_transforms(model.config)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from polymodal.checkpoint import (
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    check_model_id,
    load_state,
    read_card,
    read_weights,
    save_model_dir,
)
from polymodal.config import AugmentConfig, DualEncoderConfig, PreprocessConfig
from polymodal.convert import hf_clip_tokenizer, is_hf_clip_dir, load_hf_clip
from polymodal.models.dual_encoder import DualEncoder
from polymodal.registry import get_preset
from polymodal.tokenizer import Tokenizer, check_tokenizer_fits, pretrained_tokenizer
from polymodal.transforms import ImageTransform, TrainTransform


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def create_model(source: str | DualEncoderConfig, *, pretrained: bool = True,
                 device: str | torch.device | None = None) -> DualEncoder:
    """A new model from a preset name, a JSON file or a config; towers that name
    pretrained weights (the MiniLM text tower) load them unless `pretrained=False`."""
    config = get_preset(source) if isinstance(source, str) else source
    model = DualEncoder(config)
    if pretrained:
        model.load_pretrained_towers()
    return model.to(device or default_device())


def load_model(path: str | Path, device: str | torch.device | None = None) -> DualEncoder:
    """A trained model from a polymodal model directory or a transformers CLIP directory,
    in eval mode."""
    path = Path(path)
    if is_hf_clip_dir(path):
        model = load_hf_clip(path)[0]
    else:
        card = read_card(path)
        model = DualEncoder(card.config)
        state = read_weights(path / WEIGHTS_FILE)
        load_state(model, state, str(path))  # names mis-fitting tensors first
        check_model_id(state, card, path)
    return model.to(device or default_device()).eval()


def get_tokenizer(source: str | Path | DualEncoderConfig) -> Tokenizer:
    """The tokenizer of a model directory, a HF CLIP directory, or a preset/config with a
    pretrained text tower."""
    if isinstance(source, DualEncoderConfig):
        return pretrained_tokenizer(source)
    path = Path(source)
    if is_hf_clip_dir(path):
        return hf_clip_tokenizer(path)
    if path.is_dir():
        config = read_card(path).config
        return Tokenizer.from_file(path / TOKENIZER_FILE, config.text.context_length, config.tokenizer)
    return pretrained_tokenizer(get_preset(str(source)))


def get_transforms(config: DualEncoderConfig | PreprocessConfig, augment: AugmentConfig | None = None,
                   seed: int = 0) -> ImageTransform:
    """Evaluation preprocessing, or training preprocessing when `augment` is given."""
    preprocess = config.preprocess if isinstance(config, DualEncoderConfig) else config
    return ImageTransform(preprocess) if augment is None else TrainTransform(preprocess, augment, seed)


def save_model(model: DualEncoder, tokenizer: Tokenizer, path: str | Path, *,
               training: dict | None = None, metrics: dict | None = None, source: str = "",
               overwrite: bool = False) -> str:
    """Write a model directory (see checkpoint.py); returns the model id."""
    check_tokenizer_fits(model.config, tokenizer)
    config = dataclasses.replace(model.config, tokenizer=tokenizer.config)  # the tokenizer's own padding
    return save_model_dir(model, config, tokenizer.backend.to_str(), path, training=training,
                          metrics=metrics, source=source, overwrite=overwrite)
