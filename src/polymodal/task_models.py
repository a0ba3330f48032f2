"""Captioners and fusion models as model directories (the layout of checkpoint.py, with
"architecture" captioner or fusion), and loading them back with their tokenizer.

    save_task_model(captioner, tokenizer, "runs/cap/model")
    captioner, tokenizer = load_captioner("runs/cap/model")
    fusion, tokenizer = load_fusion_model("runs/vqa/model")
"""

from __future__ import annotations

from pathlib import Path

import torch

from polymodal.checkpoint import (
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    load_state,
    model_id,
    read_config,
    read_weights,
    save_model_dir,
)
from polymodal.config import CaptionerConfig, FusionModelConfig
from polymodal.errors import CheckpointError
from polymodal.models.captioner import Captioner
from polymodal.models.dual_encoder import build_tower
from polymodal.models.fusion import FusionModel
from polymodal.tokenizer import Tokenizer


def build_fusion_model(config: FusionModelConfig) -> FusionModel:
    """A fusion model with a fresh vision tower, remembering its full config for saving."""
    model = FusionModel(config.fusion, build_tower(config.vision, config.fusion.image_width))
    model.model_config = config
    return model


def save_task_model(model: Captioner | FusionModel, tokenizer: Tokenizer, path: str | Path, *,
                    training: dict | None = None, metrics: dict | None = None, source: str = "",
                    overwrite: bool = False) -> str:
    """Write the model directory; returns the model id."""
    config: CaptionerConfig | FusionModelConfig | None
    if isinstance(model, Captioner):
        config, vocab, context = model.cfg, model.cfg.vocab_size, model.cfg.context_length
    else:
        config, vocab, context = model.model_config, model.cfg.vocab_size, model.cfg.context_length
        if config is None:
            raise CheckpointError("this fusion model has no full config: build it with build_fusion_model")
    if tokenizer.vocab_size > vocab or tokenizer.context_length != context:
        raise CheckpointError(f"the tokenizer ({tokenizer.vocab_size} tokens, context {tokenizer.context_length}) "
                              f"does not fit the model ({vocab} tokens, context {context})")
    return save_model_dir(model, config, tokenizer.backend.to_str(), path, training=training, metrics=metrics,
                          source=source, overwrite=overwrite)


def load_captioner(path: str | Path, device: str | torch.device = "cpu") -> tuple[Captioner, Tokenizer]:
    card, config = read_config(path, CaptionerConfig)
    model = Captioner(config)
    _load_weights(model, Path(path), card.get("model_id", ""))
    tokenizer = Tokenizer.from_file(Path(path) / TOKENIZER_FILE, config.context_length, config.tokenizer)
    return model.to(device).eval(), tokenizer


def load_fusion_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FusionModel, Tokenizer]:
    card, config = read_config(path, FusionModelConfig)
    model = build_fusion_model(config)
    _load_weights(model, Path(path), card.get("model_id", ""))
    tokenizer = Tokenizer.from_file(Path(path) / TOKENIZER_FILE, config.fusion.context_length, config.tokenizer)
    return model.to(device).eval(), tokenizer


def _load_weights(model: torch.nn.Module, path: Path, recorded_id: str) -> None:
    state = read_weights(path / WEIGHTS_FILE)
    if recorded_id and model_id(state) != recorded_id:
        raise CheckpointError(f"{path}: weights do not match the recorded model id {recorded_id} "
                              "(modified or corrupt file)")
    load_state(model, state, str(path / WEIGHTS_FILE))
