"""What a training run trains (`TrainConfig.task`): the model, its tokenizer, the loss of a
batch, validation, and the model directory it writes. The Trainer (loop.py) runs any of
them with the same schedule, checkpoints, resumption, early stopping and budget.

- contrastive: a dual encoder and an image-text loss (CLIP, SigLIP, ...), gradient caching,
  a frozen text tower's features cached;
- vqa: a fusion model over a vision tower (from a preset, or a trained dual encoder's
  with `model.init`), a word-level tokenizer learned from the training questions, and
  cross-entropy over the answers; validated by accuracy, overall and per question type;
- caption: a decoder over a vision tower, validated by BLEU and CIDEr-D;
- fusion (train/fusion_objective.py): a dual encoder and a fusion model over its image
  tower, trained jointly; validated by re-ranking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.config import (
    FusionConfig,
    FusionModelConfig,
    HFTextConfig,
    PreprocessConfig,
    TokenizerConfig,
    TransformerConfig,
    ViTConfig,
)
from polymodal.data.loader import Batch
from polymodal.data.records import PairSet
from polymodal.errors import ConfigError
from polymodal.eval.embed import embed_pair_set
from polymodal.eval.retrieval import PRIMARY_METRIC, retrieval_metrics
from polymodal.factory import create_model, get_tokenizer, get_transforms, load_model, save_model
from polymodal.inference import TextFeatureCache, autocast, model_device
from polymodal.models.captioner import Captioner
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.fusion import FusionModel
from polymodal.models.tower import Tower
from polymodal.registry import get_preset
from polymodal.tokenizer import TokenBatch, Tokenizer, pretrained_tokenizer, train_bpe, train_wordlevel
from polymodal.train import distributed as dist_utils
from polymodal.train.config import HeadSection, TrainConfig
from polymodal.train.step import backward_step
from polymodal.train.task import ContrastiveTask, build_loss

Status = Callable[[str], AbstractContextManager[Any]]  # shows a message while a slow setup step runs


class Objective(ABC):
    model: nn.Module
    tokenizer: Tokenizer
    preprocess: PreprocessConfig
    primary_metric: str

    @abstractmethod
    def backward(self, batch: Batch, chunks: int, dtype: torch.dtype | None) -> float:
        """Accumulate the gradients of the batch's loss; return the loss."""

    def before_step(self, step: int, total: int) -> None:  # noqa: B027 - most objectives need nothing here
        """Runs before step `step` (0-based) of `total`, also after a resume (e.g. a schedule)."""

    def after_step(self) -> None:  # noqa: B027 - most objectives need nothing here
        """Runs after each optimiser step (e.g. clamping a learned temperature)."""

    def log_fields(self) -> dict[str, float]:
        """Extra numbers for each logged step."""
        return {}

    @abstractmethod
    def validate(self, val_pairs: PairSet, dtype: torch.dtype | None) -> dict[str, float]:
        """Validation metrics (higher is better for `primary_metric`)."""

    @abstractmethod
    def save(self, path: Path, training: dict[str, Any], metrics: dict[str, float], source: str) -> str:
        """Write the model directory; return the model id."""


# --------------------------------------------------------------------------- contrastive


class ContrastiveObjective(Objective):
    primary_metric = PRIMARY_METRIC

    def __init__(self, cfg: TrainConfig, train_pairs: PairSet, val_pairs: PairSet | None,
                 info: dist_utils.DistInfo, run_dir: Path, resuming: bool, dtype: torch.dtype | None,
                 status: Status) -> None:
        model = self._build_model(cfg, info)
        tokenizer = self._tokenizer(cfg, model, train_pairs, info, run_dir, resuming)
        self.model: DualEncoder = model
        self.tokenizer = tokenizer
        self.preprocess = model.config.preprocess
        text_cache = self.val_cache = None
        if cfg.model.lock_text and cfg.model.text_unlocked_groups == 0:
            with status("caching the frozen text tower's features"):
                text_cache = TextFeatureCache(model.text, tokenizer, train_pairs.captions(), dtype=dtype)
                if val_pairs is not None:
                    self.val_cache = TextFeatureCache(model.text, tokenizer, val_pairs.captions(), dtype=dtype)
        self.loss_fn = build_loss(cfg.loss)
        if self.loss_fn.needs_bias and model.logit_bias is None:
            raise ConfigError(f"loss {cfg.loss.kind!r} needs a model with a logit bias: set "
                              "init_logit_bias (e.g. -10) in the model config")
        self.task = ContrastiveTask(model, tokenizer, train_pairs.captions(), text_cache)
        self.loss_name = cfg.loss.kind

    @staticmethod
    def _build_model(cfg: TrainConfig, info: dist_utils.DistInfo) -> DualEncoder:
        section = cfg.model
        model = load_model(section.init, device=info.device) if section.init else \
            create_model(get_preset(section.preset), device=info.device)
        if section.lock_text:
            model.lock_text_tower(section.text_unlocked_groups)
        if section.lock_image:
            model.lock_image_tower(section.image_unlocked_groups)
        if section.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    @staticmethod
    def _tokenizer(cfg: TrainConfig, model: DualEncoder, train_pairs: PairSet, info: dist_utils.DistInfo,
                   run_dir: Path, resuming: bool) -> Tokenizer:
        if cfg.model.init:
            return get_tokenizer(cfg.model.init)
        config = model.config
        text = config.text
        if isinstance(text, HFTextConfig):
            return pretrained_tokenizer(config)
        return run_tokenizer(run_dir, info, resuming, text.context_length, config.tokenizer,
                             lambda: train_bpe(train_pairs.captions(), text.vocab_size,
                                               cfg.model.tokenizer_min_frequency))

    def backward(self, batch: Batch, chunks: int, dtype: torch.dtype | None) -> float:
        return backward_step(self.task, self.loss_fn, batch, chunks, dtype)

    def after_step(self) -> None:
        with torch.no_grad():  # CLIP clamps the learned temperature at 100
            self.model.logit_scale.clamp_(0, self.model.config.max_logit_scale)

    def log_fields(self) -> dict[str, float]:
        return {"logit_scale": float(self.model.logit_scale.detach().exp())}

    def validate(self, val_pairs: PairSet, dtype: torch.dtype | None) -> dict[str, float]:
        embedded = embed_pair_set(self.model, self.tokenizer, val_pairs, get_transforms(self.model.config),
                                  dtype=dtype, text_cache=self.val_cache)
        return retrieval_metrics(embedded.image_embeds, embedded.text_embeds, embedded.image_groups,
                                 embedded.text_groups)

    def save(self, path: Path, training: dict[str, Any], metrics: dict[str, float], source: str) -> str:
        return save_model(self.model, self.tokenizer, path, training={**training, "loss": self.loss_name},
                          metrics=metrics, source=source, overwrite=True)


# --------------------------------------------------------------------------- models that read the tower's tokens


class _ReaderObjective(Objective):
    """Shared by vqa and caption: a word-level tokenizer over the training texts (questions
    or captions), a batch's texts looked up by caption id, and a model directory written by
    task_models."""

    model: FusionModel | Captioner
    texts: list[str]

    def backward(self, batch: Batch, chunks: int, dtype: torch.dtype | None) -> float:
        device = model_device(self.model)
        tokens = self.tokenizer([self.texts[i] for i in batch.caption_ids.tolist()]).to(device)
        with autocast(device, dtype):
            loss = self._loss(batch.pixels.to(device), tokens, batch.groups.to(device))
        loss.backward()
        return float(loss.item())

    @abstractmethod
    def _loss(self, pixels: torch.Tensor, tokens: TokenBatch, groups: torch.Tensor) -> torch.Tensor:
        """The batch's loss (groups: the answer of each question, for vqa)."""

    def save(self, path: Path, training: dict[str, Any], metrics: dict[str, float], source: str) -> str:
        from polymodal.task_models import save_task_model

        return save_task_model(self.model, self.tokenizer, path, training=training, metrics=metrics, source=source,
                               overwrite=True)


# --------------------------------------------------------------------------- vqa


class VQAObjective(_ReaderObjective):
    primary_metric = "accuracy"

    def __init__(self, cfg: TrainConfig, train_pairs: PairSet, val_pairs: PairSet | None,
                 info: dist_utils.DistInfo, run_dir: Path, resuming: bool) -> None:
        from polymodal.task_models import build_fusion_model

        if not train_pairs.class_names:
            raise ConfigError("task 'vqa' needs a questions source: data.kind = \"questions\"")
        if val_pairs is not None and val_pairs.class_names != train_pairs.class_names:
            raise ConfigError("the validation questions have another answer vocabulary than the training ones")
        dual, preset = _vision_source(cfg)
        vision = preset.vision
        head = cfg.head
        self.tokenizer = run_tokenizer(run_dir, info, resuming, head.context_length, TokenizerConfig(),
                                       lambda: train_wordlevel(train_pairs.captions(), head.min_word_count))
        fusion = fusion_config(head, vision, self.tokenizer.vocab_size, num_answers=len(train_pairs.class_names))
        config = FusionModelConfig(vision=vision, fusion=fusion, preprocess=preset.preprocess,
                                   answers=tuple(train_pairs.class_names))
        model = build_fusion_model(config)
        if dual is not None:
            _copy_vision(dual, model.vision, cfg)
        self.model: FusionModel = model.to(info.device)
        self.preprocess = preset.preprocess
        self.texts = train_pairs.captions()  # the questions

    def _loss(self, pixels: torch.Tensor, tokens: TokenBatch, groups: torch.Tensor) -> torch.Tensor:
        from polymodal.train.fusion_task import vqa_loss

        return vqa_loss(self.model, pixels, tokens, groups)

    def validate(self, val_pairs: PairSet, dtype: torch.dtype | None) -> dict[str, float]:
        from polymodal.eval.vqa import predict_answers, vqa_metrics

        predicted = predict_answers(self.model, self.tokenizer, self.preprocess, val_pairs.records, dtype=dtype)
        return vqa_metrics(predicted, np.array([r.group for r in val_pairs.records]),
                           [r.key for r in val_pairs.records], len(val_pairs.class_names))

# --------------------------------------------------------------------------- caption


class CaptionObjective(_ReaderObjective):
    primary_metric = "cider"

    def __init__(self, cfg: TrainConfig, train_pairs: PairSet, info: dist_utils.DistInfo, run_dir: Path,
                 resuming: bool) -> None:
        from polymodal.config import CaptionerConfig

        dual, preset = _vision_source(cfg)
        head = cfg.head
        self.tokenizer = run_tokenizer(run_dir, info, resuming, head.context_length, TokenizerConfig(),
                                       lambda: train_wordlevel(train_pairs.captions(), head.min_word_count))
        config = CaptionerConfig(vision=preset.vision, vocab_size=self.tokenizer.vocab_size,
                                 context_length=head.context_length,
                                 transformer=TransformerConfig(width=head.width, layers=head.layers, heads=head.heads),
                                 preprocess=preset.preprocess)
        model = Captioner(config)
        if dual is not None:
            _copy_vision(dual, model.vision, cfg)
        self.model: Captioner = model.to(info.device)
        self.preprocess = preset.preprocess
        self.texts = train_pairs.captions()

    def _loss(self, pixels: torch.Tensor, tokens: TokenBatch, groups: torch.Tensor) -> torch.Tensor:
        return self.model(pixels, tokens.input_ids, tokens.attention_mask)

    def validate(self, val_pairs: PairSet, dtype: torch.dtype | None) -> dict[str, float]:
        from polymodal.eval.caption_metrics import caption_scores
        from polymodal.eval.captioning import caption_records

        written = caption_records(self.model, self.tokenizer, self.preprocess, val_pairs.records, dtype=dtype)
        return {k: 100 * v if k.startswith("bleu") else v
                for k, v in caption_scores(written, [list(r.captions) for r in val_pairs.records]).items()}

def _vision_source(cfg: TrainConfig) -> tuple[DualEncoder | None, Any]:
    """(the dual encoder of model.init or None, the config whose vision tower and
    preprocessing the new model takes: that dual encoder's, else the preset's)."""
    dual = load_model(cfg.model.init, device="cpu") if cfg.model.init else None
    preset = dual.config if dual is not None else get_preset(cfg.model.preset)
    if not isinstance(preset.vision, ViTConfig):
        raise ConfigError(f"task {cfg.task!r} needs a ViT vision tower: its patch tokens are what the new layers read")
    return dual, preset


def _copy_vision(dual: DualEncoder, vision: Tower, cfg: TrainConfig) -> None:
    """Start from the dual encoder's trained vision tower (its projection head differs)."""
    state = {k: v for k, v in dual.visual.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = vision.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ConfigError(f"model.init {cfg.model.init}: its vision tower does not fit ({missing}, {unexpected})")
    if cfg.model.lock_image:
        vision.lock(cfg.model.image_unlocked_groups)


# --------------------------------------------------------------------------- shared


def fusion_config(head: HeadSection, vision: ViTConfig, vocab_size: int, num_answers: int = 0) -> FusionConfig:
    """The fusion encoder of a [head] section, over the tokens of `vision` (patches, and
    the class token when the tower pools with it). The word-level tokenizers put <mask> at 3."""
    return FusionConfig(kind=head.layout, vocab_size=vocab_size, context_length=head.context_length,
                        image_tokens=vision.grid_size ** 2 + (vision.pool == "cls"),
                        image_width=vision.transformer.width,
                        transformer=TransformerConfig(width=head.width, layers=head.layers, heads=head.heads),
                        mask_token_id=3, num_answers=num_answers)


def run_tokenizer(run_dir: Path, info: dist_utils.DistInfo, resuming: bool, context_length: int,
                  config: TokenizerConfig, train: Callable[[], Any], name: str = "tokenizer.json") -> Tokenizer:
    """The run's own tokenizer: learned from the training text at the start (every rank
    learns the same one; rank 0 writes it), read back from RUN/`name` on resume."""
    saved = run_dir / name
    if resuming:
        return Tokenizer.from_file(saved, context_length, config)
    tokenizer = Tokenizer(train(), context_length, config)
    if info.is_main:
        tokenizer.save(saved)
    return tokenizer


def build_objective(cfg: TrainConfig, train_pairs: PairSet, val_pairs: PairSet | None, info: dist_utils.DistInfo,
                    run_dir: Path, resuming: bool, dtype: torch.dtype | None, status: Status) -> Objective:
    if cfg.task == "vqa":
        return VQAObjective(cfg, train_pairs, val_pairs, info, run_dir, resuming)
    if cfg.task == "caption":
        return CaptionObjective(cfg, train_pairs, info, run_dir, resuming)
    if cfg.task == "fusion":
        from polymodal.train.fusion_objective import FusionObjective

        return FusionObjective(cfg, train_pairs, val_pairs, info, run_dir, resuming, dtype, status)
    return ContrastiveObjective(cfg, train_pairs, val_pairs, info, run_dir, resuming, dtype, status)
