"""VQA evaluation: accuracy of a fusion model's answers, overall, balanced over answers,
and per question type, on a questions source (e.g. the shapes test or test_heldout split).

    evaluation = evaluate_vqa("runs/shapes-vqa/model", QuestionsSource(file=..., split="test_heldout"))
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from polymodal.config import PreprocessConfig
from polymodal.data.records import PairRecord
from polymodal.data.sources import QuestionsSource, load_source
from polymodal.errors import DataError
from polymodal.eval.embed import pixel_batches
from polymodal.eval.report import Evaluation
from polymodal.inference import autocast, model_device
from polymodal.models.fusion import FusionModel
from polymodal.task_models import load_fusion_model
from polymodal.tokenizer import Tokenizer


def vqa_metrics(predicted: np.ndarray, answers: np.ndarray, kinds: list[str], num_answers: int
                ) -> dict[str, float]:
    """Accuracy overall, balanced over answers, and per question type (percent)."""
    if len(predicted) == 0:
        raise DataError("no questions to evaluate")
    correct = predicted == answers
    out = {"accuracy": 100 * float(correct.mean())}
    per_answer = [correct[answers == a].mean() for a in range(num_answers) if (answers == a).any()]
    out["balanced_accuracy"] = 100 * float(np.mean(per_answer))
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        out[f"accuracy_{kind}"] = 100 * float(correct[mask].mean())
    return out


@torch.no_grad()
def predict_answers(model: FusionModel, tokenizer: Tokenizer, preprocess: PreprocessConfig,
                    records: list[PairRecord], batch_size: int = 128, dtype: torch.dtype | None = None
                    ) -> np.ndarray:
    """The predicted answer index of each record (caption = question)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    predicted = []
    for chunk, pixels in pixel_batches(records, preprocess, batch_size, device):
        tokens = tokenizer([r.captions[0] for r in chunk]).to(device)
        with autocast(device, dtype):
            logits = model.answer_logits(tokens.input_ids, tokens.attention_mask, model.image_tokens(pixels))
        predicted.append(logits.float().argmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(predicted).numpy() if predicted else np.zeros(0, np.int64)


def evaluate_vqa(model_dir: str | Path, source: QuestionsSource, device: str = "cpu") -> Evaluation:
    start = time.perf_counter()
    model, tokenizer = load_fusion_model(model_dir, device)
    assert model.model_config is not None
    pairs = load_source(source)
    if list(model.model_config.answers) != pairs.class_names:
        raise DataError(f"{source.file} has another answer vocabulary than the model was trained on")
    predicted = predict_answers(model, tokenizer, model.model_config.preprocess, pairs.records)
    answers = np.array([r.group for r in pairs.records])
    kinds = [r.key for r in pairs.records]
    metrics = vqa_metrics(predicted, answers, kinds, len(pairs.class_names))
    rows = [{"type": kind, "questions": kinds.count(kind), "accuracy": round(metrics[f"accuracy_{kind}"], 2),
             "chance": round(100 / len({int(a) for a, k in zip(answers, kinds, strict=True) if k == kind}), 2)}
            for kind in sorted(set(kinds))]
    return Evaluation("vqa", metrics, "accuracy",
                      info={"model": str(model_dir), "data": pairs.name, "questions": len(pairs.records),
                            "answers": len(pairs.class_names), "seconds": round(time.perf_counter() - start, 1)},
                      skipped=list(pairs.dropped.items()), tables={"accuracy per question type": rows})
