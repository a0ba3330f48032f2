"""task = "fusion": a dual encoder and a fusion model that reads its image tower's tokens,
trained together as in ALBEF (Li et al. 2021):

    loss = contrastive + itm_weight * ITM + mlm_weight * MLM (+ mpm_weight * MPM, single layout)

- the dual encoder's own loss ([loss] section: clip, siglip, ...);
- image-text matching with hard negatives drawn from the dual encoder's similarities
  within the batch (losses/fusion.py);
- masked language modelling of the captions conditioned on the image;
- masked patch modelling when the fusion layout is single-stream.

The image tower is shared: the contrastive, ITM and MLM gradients all train it, and it
runs once per batch. The text side of the fusion model has its own word-level vocabulary
(RUN/fusion_tokenizer.json); the dual encoder keeps its tokenizer and may keep its text
tower locked (model.lock_text).

The run writes RUN/model, the fusion model (`polymodal search STORE "text" --rerank 20
--reranker RUN/model`), and RUN/dual_encoder, the dual encoder trained with it (what the
store indexes with). Validation re-ranks: each validation image's first caption ranks the
images with the dual encoder, the ITM head re-ranks the top `head.rerank_top`, and the
re-ranked mean of R@1/5/10 picks the model (eval/rerank.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.config import FusionModelConfig, TokenizerConfig, ViTConfig
from polymodal.data.loader import Batch
from polymodal.data.records import PairSet
from polymodal.errors import ConfigError
from polymodal.eval.rerank import PRIMARY_METRIC, rerank_pair_set
from polymodal.inference import autocast, model_device
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.fusion import FusionModel
from polymodal.tokenizer import train_wordlevel
from polymodal.train import distributed as dist_utils
from polymodal.train.config import TrainConfig
from polymodal.train.fusion_task import joint_losses
from polymodal.train.objectives import ContrastiveObjective, Objective, Status, fusion_config, run_tokenizer

DUAL_ENCODER_DIR = "dual_encoder"  # beside RUN/model


class JointModel(nn.Module):
    """What the Trainer optimises and checkpoints: the dual encoder and the fusion model,
    whose vision tower is the dual encoder's image tower (one set of weights)."""

    def __init__(self, dual: DualEncoder, fusion: FusionModel) -> None:
        super().__init__()
        if fusion.vision is not dual.visual:
            raise ValueError("the fusion model must read the dual encoder's own image tower")
        self.dual = dual
        self.fusion = fusion


class FusionObjective(Objective):
    primary_metric = PRIMARY_METRIC

    def __init__(self, cfg: TrainConfig, train_pairs: PairSet, val_pairs: PairSet | None,
                 info: dist_utils.DistInfo, run_dir: Path, resuming: bool, dtype: torch.dtype | None,
                 status: Status) -> None:
        self.contrastive = ContrastiveObjective(cfg, train_pairs, val_pairs, info, run_dir, resuming, dtype, status)
        dual = self.contrastive.model
        vision = dual.config.vision
        if not isinstance(vision, ViTConfig):
            raise ConfigError("task 'fusion' needs a ViT image tower: its patch tokens are what the fusion model reads")
        head = cfg.head
        self.tokenizer = run_tokenizer(run_dir, info, resuming, head.context_length, TokenizerConfig(),
                                       lambda: train_wordlevel(train_pairs.captions(), head.min_word_count),
                                       name="fusion_tokenizer.json")
        self.config = FusionModelConfig(vision=vision, fusion=fusion_config(head, vision, self.tokenizer.vocab_size),
                                        preprocess=dual.config.preprocess)
        self.fusion = FusionModel(self.config.fusion, dual.visual).to(model_device(dual))
        self.fusion.model_config = self.config
        self.model = JointModel(dual, self.fusion)
        self.preprocess = dual.config.preprocess
        self.texts = train_pairs.captions()
        self.weights = {"itm": head.itm_weight, "mlm": head.mlm_weight, "mpm": head.mpm_weight}
        self.rerank_top = head.rerank_top
        self.head = head
        self.negative_temperature = head.itm_negative_temperature
        self.last_losses: dict[str, float] = {}

    def backward(self, batch: Batch, chunks: int, dtype: torch.dtype | None) -> float:
        dual, task = self.contrastive.model, self.contrastive.task
        device = model_device(dual)
        groups = batch.groups.to(device)
        tokens = self.tokenizer([self.texts[i] for i in batch.caption_ids.tolist()]).to(device)
        with autocast(device, dtype):
            features = dual.visual.forward_features(batch.pixels.to(device, non_blocking=True))
            output = task.output(F.normalize(dual.visual.forward_head(features.pooled), dim=-1),
                                 task.encode_captions(batch.caption_ids))
            assert output.image_embeds is not None and output.text_embeds is not None
            similarity = output.logit_scale * output.image_embeds.float() @ output.text_embeds.float().t()
            parts = joint_losses(self.fusion, features.tokens, tokens, similarity.detach(), groups,
                                 negative_temperature=self.negative_temperature)
        contrastive = self.contrastive.loss_fn(output, groups)
        loss = contrastive + sum(self.weights[name] * value for name, value in parts.items())
        loss.backward()
        self.last_losses = {"contrastive_loss": float(contrastive.item()),
                            **{f"{name}_loss": float(value.item()) for name, value in parts.items()}}
        return float(loss.item())

    def before_step(self, step: int, total: int) -> None:
        self.negative_temperature = self.head.negative_temperature(step, total)

    def after_step(self) -> None:
        self.contrastive.after_step()

    def log_fields(self) -> dict[str, float]:
        return {**self.contrastive.log_fields(), **self.last_losses,
                "itm_negative_temperature": self.negative_temperature}

    def validate(self, val_pairs: PairSet, dtype: torch.dtype | None) -> dict[str, float]:
        return rerank_pair_set(self.contrastive.model, self.contrastive.tokenizer, self.fusion, self.tokenizer,
                               val_pairs, self.rerank_top, first_caption_only=True, dtype=dtype,
                               text_cache=self.contrastive.val_cache).metrics

    def save(self, path: Path, training: dict[str, Any], metrics: dict[str, float], source: str) -> str:
        """RUN/model: the fusion model, as a standalone model directory (its own copy of the
        image tower); RUN/dual_encoder: the dual encoder."""
        from polymodal.task_models import build_fusion_model, save_task_model

        with torch.random.fork_rng(devices=[]):  # building it must not move the run's RNG (resumption replays it)
            standalone = build_fusion_model(self.config)
        # the shared tower's projection head belongs to the dual encoder; the fusion model never uses it
        state = {k: v for k, v in self.fusion.state_dict().items() if not k.startswith("vision.head.")}
        missing, unexpected = standalone.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("vision.head.") for k in missing):
            raise RuntimeError(f"fusion weights do not fit the saved layout ({missing}, {unexpected})")
        self.contrastive.save(path.with_name(DUAL_ENCODER_DIR), training, metrics, source)
        return save_task_model(standalone, self.tokenizer, path, training=training, metrics=metrics, source=source,
                               overwrite=True)
