"""Training configuration: a TOML file plus `--set key=value` overrides, parsed into
frozen dataclasses (unknown keys are errors that name the key).

    output = "runs/emoji"
    [data]  kind = "emoji"            # or captions / tar / classes, see data/sources.py
    [val]   kind = "emoji"  split = "val"
    [model] preset = "vit-tiny-64-minilm"  lock_text = true
    [loss]  kind = "clip"
    [optim] lr = 5e-4  warmup_steps = 100
    [train] batch_size = 128  epochs = 10
    [augment] scale = [0.7, 1.0]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from polymodal.config import AugmentConfig, from_dict
from polymodal.data.sources import SourceConfig
from polymodal.errors import ConfigError
from polymodal.eval.retrieval import GREATER_IS_BETTER


@dataclass(frozen=True)
class ModelSection:
    preset: str = "vit-tiny-64-minilm"  # a preset name or a JSON config file
    init: str = ""  # start from this model directory (weights and tokenizer) instead
    lock_text: bool = False  # LiT: freeze the text backbone (its projection still trains)
    text_unlocked_groups: int = 0  # ... except its last N blocks
    lock_image: bool = False
    image_unlocked_groups: int = 0
    grad_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    tokenizer_min_frequency: int = 2  # for the BPE tokenizer of a from-scratch text tower


@dataclass(frozen=True)
class LossSection:
    kind: Literal["clip", "siglip", "triplet", "vsepp"] = "clip"
    margin: float = 0.2  # triplet, vsepp
    mining: Literal["all", "hard", "semi-hard"] = "semi-hard"  # triplet
    distance: Literal["cosine", "euclidean"] = "cosine"  # triplet
    hardest: bool = True  # vsepp: hardest negative (VSE++) or the sum over all (DeViSE)


@dataclass(frozen=True)
class OptimSection:
    lr: float = 5e-4
    weight_decay: float = 0.1  # not applied to norms, biases, embeddings, temperature
    betas: tuple[float, float] = (0.9, 0.98)  # CLIP's beta2 = 0.98 for stability
    eps: float = 1e-6
    warmup_steps: int = 100  # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 = off

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError("optim: lr must be > 0; weight_decay, warmup_steps, grad_clip >= 0")


@dataclass(frozen=True)
class LoopSection:
    batch_size: int = 128  # global batch (all processes, all accumulation chunks)
    accum_steps: int = 1  # gradient caching: the batch is embedded in this many chunks
    epochs: float = 10.0
    steps: int = 0  # if > 0, overrides epochs
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 1  # image-decoding processes
    log_every: int = 10
    eval_every: int = 0  # steps between validations; 0 = once per epoch
    checkpoint_every: int = 100  # steps between resumable checkpoints
    early_stopping_patience: int = 0  # stop after N evaluations without improvement; 0 = off
    early_stopping_metric: str = ""  # the validation metric that picks the model; "" = the task's own
    max_minutes: float = 0.0  # stop (cleanly) after this much training time; 0 = no limit

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError("train.batch_size must be >= 2 (a contrastive batch needs negatives)")
        if self.accum_steps < 1 or self.batch_size % self.accum_steps:
            raise ConfigError(f"train.batch_size {self.batch_size} must be divisible by "
                              f"train.accum_steps {self.accum_steps}")
        if self.steps < 0 or self.epochs <= 0 and self.steps == 0:
            raise ConfigError("give train.steps > 0 or train.epochs > 0")
        if min(self.log_every, self.checkpoint_every) < 1 or self.eval_every < 0:
            raise ConfigError("train.log_every and train.checkpoint_every must be >= 1, train.eval_every >= 0")


@dataclass(frozen=True)
class HeadSection:
    """The model that reads the vision tower's tokens, for tasks other than contrastive:
    a fusion encoder (vqa, fusion) or a caption decoder (caption) of this size; its
    word-level vocabulary keeps the words seen at least `min_word_count` times in training.
    A fusion run adds the weighted ITM, MLM and (single layout) masked-patch losses to the
    contrastive loss, and validates by re-ranking each image's first caption's top
    `rerank_top` images. ITM's negatives are drawn with weights softmax(logit / T), the
    dual encoder's logits over the batch, T = `itm_negative_temperature`: 1 is ALBEF's
    hard negatives; a larger T draws more uniformly (easier negatives, fewer false ones
    where many captions describe each other's images). With `itm_negative_temperature_end`
    T moves geometrically from the first to the second over the run: from easy negatives,
    which a fresh fusion model can learn from, to hard ones, which re-ranking needs."""

    layout: Literal["cross", "single"] = "cross"  # vqa, fusion
    width: int = 256
    layers: int = 4
    heads: int = 4
    context_length: int = 32
    min_word_count: int = 1
    itm_weight: float = 1.0  # fusion
    mlm_weight: float = 1.0
    mpm_weight: float = 1.0
    rerank_top: int = 10
    itm_negative_temperature: float = 1.0
    itm_negative_temperature_end: float = 0.0  # 0: T stays at itm_negative_temperature

    def __post_init__(self) -> None:
        if min(self.width, self.layers, self.heads, self.min_word_count, self.rerank_top) < 1 \
                or self.width % self.heads or self.context_length < 3:
            raise ConfigError("head: width, layers, heads, min_word_count, rerank_top >= 1, width divisible by "
                              "heads, context_length >= 3")
        if min(self.itm_weight, self.mlm_weight, self.mpm_weight) < 0:
            raise ConfigError("head: the loss weights must be >= 0")
        if not self.itm_negative_temperature > 0 or self.itm_negative_temperature_end < 0:
            raise ConfigError("head.itm_negative_temperature must be > 0 and itm_negative_temperature_end >= 0")

    def negative_temperature(self, step: int, total: int) -> float:
        """ITM's negative-sampling temperature at step `step` (0-based) of `total`."""
        start, end = self.itm_negative_temperature, self.itm_negative_temperature_end
        if not end or total <= 1:
            return start
        return start * (end / start) ** (min(step, total - 1) / (total - 1))


@dataclass(frozen=True)
class TrainConfig:
    output: str  # the run folder: checkpoint, metrics.jsonl, the final model
    data: SourceConfig
    val: SourceConfig | None = None
    # contrastive: a dual encoder (CLIP); vqa: a fusion model answering questions about images;
    # caption: an image-conditioned decoder writing captions; fusion: a dual encoder and a
    # fusion model over its image tower, trained jointly (contrastive + ITM + MLM), for re-ranking
    task: Literal["contrastive", "vqa", "caption", "fusion"] = "contrastive"
    model: ModelSection = ModelSection()
    head: HeadSection = HeadSection()
    loss: LossSection = LossSection()
    optim: OptimSection = OptimSection()
    train: LoopSection = LoopSection()
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0

    def __post_init__(self) -> None:
        metric = self.train.early_stopping_metric
        if self.task == "contrastive" and metric and metric not in GREATER_IS_BETTER:
            raise ConfigError(f"train.early_stopping_metric {metric!r} is not one of {', '.join(GREATER_IS_BETTER)}")
        if self.task == "vqa" and metric and metric not in VQA_METRICS:
            raise ConfigError(f"train.early_stopping_metric {metric!r}: a vqa run reports {', '.join(VQA_METRICS)}")
        if self.task == "caption" and metric and metric not in CAPTION_METRICS:
            raise ConfigError(f"train.early_stopping_metric {metric!r}: a caption run reports "
                              f"{', '.join(CAPTION_METRICS)}")
        if self.task == "fusion" and metric and metric not in FUSION_METRICS:
            raise ConfigError(f"train.early_stopping_metric {metric!r}: a fusion run reports "
                              f"{', '.join(FUSION_METRICS)}")
        if self.task == "fusion" and self.train.accum_steps > 1:
            raise ConfigError("train.accum_steps > 1 is not supported by task 'fusion' (its hard negatives are "
                              "drawn from the whole batch)")
        if self.task in ("vqa", "caption") and self.model.lock_text:
            raise ConfigError(f"model.lock_text is for contrastive runs: a {self.task} model has no separate "
                              "text tower")


VQA_METRICS = ("accuracy", "balanced_accuracy")
CAPTION_METRICS = ("cider", "bleu1", "bleu2", "bleu3", "bleu4")
FUSION_METRICS = ("rerank_mean_recall", "rerank_t2i_r1", "rerank_t2i_r5", "rerank_t2i_r10", "t2i_r1", "t2i_r5",
                  "t2i_r10")


# Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("train.num_workers", "train.log_every", "train.max_minutes")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["train.batch_size=64", "data.kind=emoji"] -> nested dict; values are TOML
    literals (numbers, booleans, arrays, quoted strings) or else plain strings."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        target = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
        target[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      base: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a TOML file (or `base`) with overrides applied."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = merge(data, tomllib.loads(path.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML ({err})") from None
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(TrainConfig, data, where=str(path or "config"))
