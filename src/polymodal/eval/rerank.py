"""Text→image retrieval re-ranked by a fusion model's image-text matching (ITM) head,
measured against the dual encoder alone on the same queries.

Each caption's top N images by the dual encoder are re-scored and put first in that order
(ties keep the dual encoder's order); the rest keep the dual encoder's order. The score of
a candidate is the sum of the two models' logits, as ALBEF's retrieval adds the ITM score
to the contrastive similarity (Li et al. 2021):

    score = ITM log-odds (log P(match) / P(mismatch)) + logit_scale × cosine

so a head that has learned nothing (constant log-odds) leaves the dual encoder's order as
it is, and a head that is sure overrides it. Re-ranking only moves positives that are
already in the top N, so R@N does not change and the dual encoder's R@N
(`candidate_recall`) is the ceiling of every re-ranked R@K. The metrics also rank the
candidates by the ITM head alone (`itm_t2i_*`), which shows what the head knows by itself.

    metrics = rerank_metrics(scores, positives, top_n, log_odds, dual_weight)  # pure, no model
    evaluation = evaluate_rerank("runs/fusion/dual_encoder", "runs/fusion/model",
                                 "recipes/eval/flickr8k-test.toml", top_n=20)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from polymodal.data.records import PairRecord, PairSet
from polymodal.errors import DataError
from polymodal.eval.embed import Progress, embed_pair_set, pixel_batches
from polymodal.eval.metrics import Ranking
from polymodal.eval.report import Evaluation
from polymodal.inference import TextFeatureCache, autocast, model_device
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.fusion import FusionModel
from polymodal.tokenizer import TokenBatch, Tokenizer

KS = (1, 5, 10)
PRIMARY_METRIC = "rerank_mean_recall"  # mean of the re-ranked text→image R@1/5/10

Match = Callable[[np.ndarray], np.ndarray]  # (Q, n) candidate image indices -> (Q, n) ITM log-odds
StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


def top_candidates(scores: np.ndarray, n: int) -> np.ndarray:
    """(Q, n) indices of each row's n highest scores, best first (equal scores: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def reranked_scores(scores: np.ndarray, top: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """Scores that rank each row's candidates `top` first, by `candidate_scores` (ties: the
    order of `top`), and every other item after them in the original order. Integer steps
    between the candidates, so that no two of them tie."""
    q, n = top.shape
    order = np.lexsort((np.broadcast_to(np.arange(n), (q, n)), -candidate_scores), axis=1)  # by score, then position
    ranked = np.take_along_axis(top, order, axis=1)
    out = scores.astype(np.float64) - float(scores.max()) - 1.0  # everything else: at most -1, order kept
    np.put_along_axis(out, ranked, np.broadcast_to(np.arange(n, 0, -1, dtype=np.float64), (q, n)), axis=1)
    return out


def combined_scores(scores: np.ndarray, top: np.ndarray, log_odds: np.ndarray, dual_weight: float) -> np.ndarray:
    """(Q, n) re-ranking scores of the candidates `top`: the ITM log-odds plus `dual_weight`
    (the dual encoder's logit scale) times their dual-encoder scores."""
    return log_odds + dual_weight * np.take_along_axis(scores, top, axis=1).astype(np.float64)


def rerank_metrics(scores: np.ndarray, positives: np.ndarray, top_n: int, match: Match,
                   dual_weight: float) -> dict[str, float]:
    """Text→image R@1/5/10 and median rank of the dual encoder's `scores` (queries × images),
    after re-ranking each query's top `top_n` by `match` (the ITM log-odds of the candidates)
    plus `dual_weight` × their scores, and with the ITM log-odds alone; recalls in percent."""
    if scores.shape != positives.shape or scores.ndim != 2 or not scores.size:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be one non-empty (Q, N) shape")
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    top = top_candidates(scores, min(top_n, scores.shape[1]))
    log_odds = np.asarray(match(top), dtype=np.float64)
    if log_odds.shape != top.shape:
        raise ValueError(f"match returned {log_odds.shape}, expected {top.shape}")
    rankings = {
        "t2i": Ranking(scores, positives),
        "rerank_t2i": Ranking(reranked_scores(scores, top, combined_scores(scores, top, log_odds, dual_weight)),
                              positives),
        "itm_t2i": Ranking(reranked_scores(scores, top, log_odds), positives),
    }
    metrics: dict[str, float] = {}
    for name, ranking in rankings.items():
        for k in KS:
            metrics[f"{name}_r{k}"] = 100.0 * float(ranking.recall_at(k).mean())
        metrics[f"{name}_median_rank"] = float(np.median(ranking.first_positive_rank()))
    for k in KS:
        metrics[f"gain_r{k}"] = metrics[f"rerank_t2i_r{k}"] - metrics[f"t2i_r{k}"]
    metrics["candidate_recall"] = 100.0 * float(rankings["t2i"].recall_at(top.shape[1]).mean())
    metrics[PRIMARY_METRIC] = float(np.mean([metrics[f"rerank_t2i_r{k}"] for k in KS]))
    return metrics


@torch.no_grad()
def image_tokens(fusion: FusionModel, records: Sequence[PairRecord], batch_size: int = 64,
                 dtype: torch.dtype | None = None, progress: Progress | None = None) -> torch.Tensor:
    """(N, M, W) the vision tower's tokens of each record's image, on the model's device."""
    assert fusion.model_config is not None
    device = model_device(fusion)
    out: list[torch.Tensor] = []
    for _, pixels in pixel_batches(records, fusion.model_config.preprocess, batch_size, device):
        with autocast(device, dtype):
            out.append(fusion.image_tokens(pixels).float())
        if progress is not None:
            progress(sum(len(t) for t in out), len(records))
    return torch.cat(out)


@torch.no_grad()
def itm_log_odds(fusion: FusionModel, tokens: TokenBatch, images: torch.Tensor, top: np.ndarray,
                 batch_size: int = 256, dtype: torch.dtype | None = None,
                 progress: Progress | None = None) -> np.ndarray:
    """The ITM log-odds of query q's text (row q of `tokens`) with image top[q, j] (row of `images`)."""
    device = model_device(fusion)
    queries = torch.from_numpy(np.repeat(np.arange(top.shape[0]), top.shape[1]))
    candidates = torch.from_numpy(top.reshape(-1).astype(np.int64))
    out = []
    for start in range(0, len(queries), batch_size):
        q, i = queries[start:start + batch_size], candidates[start:start + batch_size]
        with autocast(device, dtype):
            logit = fusion.match_logit(tokens.input_ids[q].to(device), tokens.attention_mask[q].to(device),
                                       images[i.to(images.device)])
        out.append(logit.float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(queries)), len(queries))
    return torch.cat(out).numpy().reshape(top.shape)


def dual_logit_scale(dual: DualEncoder) -> float:
    """What turns the dual encoder's cosines into its logits (CLIP's learned temperature)."""
    return float(dual.logit_params()[0].detach())


@dataclass
class RerankResult:
    metrics: dict[str, float]
    queries: int
    images: int
    vision_ms_per_image: float  # the fusion model's vision tower, per candidate image
    fusion_ms_per_query: float  # ITM over the top N of one query, image tokens given
    skipped: list[tuple[str, str]]


def rerank_pair_set(dual: DualEncoder, dual_tokenizer: Tokenizer, fusion: FusionModel, fusion_tokenizer: Tokenizer,
                    pairs: PairSet, top_n: int, first_caption_only: bool = False, dtype: torch.dtype | None = None,
                    text_cache: TextFeatureCache | None = None, progress: StageProgress | None = None) -> RerankResult:
    """Rank the images of `pairs` for every caption (or each image's first caption) with
    the dual encoder, re-rank the top `top_n` with the fusion model, and time the re-ranking.
    `progress(stage, done, total)` follows the three stages."""
    from polymodal.factory import get_transforms

    was_training = dual.training, fusion.training
    dual.eval()
    fusion.eval()
    try:
        def stage(name: str) -> Progress | None:
            return None if progress is None else lambda done, total: progress(name, done, total)

        embedded = embed_pair_set(dual, dual_tokenizer, pairs, get_transforms(dual.config), dtype=dtype,
                                  text_cache=text_cache, progress=stage("dual encoder: images"))
        kept = set(embedded.image_keys)
        records = [r for r in pairs.records if r.key in kept]
        query_rows = np.arange(len(embedded.texts))
        if first_caption_only:
            query_rows = np.cumsum([0] + [len(r.captions) for r in records[:-1]])
        if len(records) < 2:
            raise DataError(f"{pairs.name}: re-ranking needs at least two readable images")
        scores = embedded.text_embeds[query_rows] @ embedded.image_embeds.T
        positives = embedded.text_groups[query_rows, None] == embedded.image_groups[None, :]

        start = time.perf_counter()
        images = image_tokens(fusion, records, dtype=dtype, progress=stage("fusion model: images"))
        vision_seconds = time.perf_counter() - start
        tokens = fusion_tokenizer([embedded.texts[i] for i in query_rows])
        start = time.perf_counter()
        metrics = rerank_metrics(scores, positives, top_n,
                                 lambda top: itm_log_odds(fusion, tokens, images, top, dtype=dtype,
                                                          progress=stage("fusion model: ITM")),
                                 dual_logit_scale(dual))
        fusion_seconds = time.perf_counter() - start
    finally:
        dual.train(was_training[0])
        fusion.train(was_training[1])
    return RerankResult(metrics, len(query_rows), len(records), 1000 * vision_seconds / len(records),
                        1000 * fusion_seconds / len(query_rows), embedded.skipped)


def evaluate_rerank(dual_dir: str | Path, fusion_dir: str | Path, data: str, top_n: int = 20, device: str = "cpu",
                    dtype: torch.dtype | None = None, progress: StageProgress | None = None) -> Evaluation:
    from polymodal.eval.runner import load_data
    from polymodal.factory import get_tokenizer, load_model
    from polymodal.task_models import load_fusion_model

    start = time.perf_counter()
    dual, dual_tokenizer = load_model(dual_dir, device=device), get_tokenizer(dual_dir)
    fusion, fusion_tokenizer = load_fusion_model(fusion_dir, device)
    pairs = load_data(data)
    if not pairs.records:
        raise DataError(f"{data}: no images with captions")
    result = rerank_pair_set(dual, dual_tokenizer, fusion, fusion_tokenizer, pairs, top_n, dtype=dtype,
                             progress=progress)
    per_query = result.fusion_ms_per_query + min(top_n, result.images) * result.vision_ms_per_image
    return Evaluation(
        "rerank", result.metrics, PRIMARY_METRIC,
        info={"dual_encoder": str(dual_dir), "fusion_model": str(fusion_dir), "data": pairs.name,
              "queries": result.queries, "images": result.images, "top_n": top_n,
              "vision_ms_per_image": round(result.vision_ms_per_image, 3),
              "fusion_ms_per_query": round(result.fusion_ms_per_query, 3),
              "added_ms_per_query": round(per_query, 2),
              "cost": "added_ms_per_query = ITM over the top N (fusion_ms_per_query) + the fusion model's vision "
                      "tower on N images (vision_ms_per_image x N), as `polymodal search --rerank N` spends it; "
                      "image decoding not included",
              "seconds": round(time.perf_counter() - start, 1)},
        skipped=result.skipped + sorted(pairs.dropped.items()),
        metric_groups={
            "dual encoder": [f"t2i_r{k}" for k in KS] + ["t2i_median_rank", "candidate_recall"],
            "re-ranked (ITM + dual encoder)": [f"rerank_t2i_r{k}" for k in KS] + ["rerank_t2i_median_rank"],
            "re-ranked by ITM alone": [f"itm_t2i_r{k}" for k in KS] + ["itm_t2i_median_rank"],
            "gain (points)": [f"gain_r{k}" for k in KS],
            "summary": [PRIMARY_METRIC],
        })
