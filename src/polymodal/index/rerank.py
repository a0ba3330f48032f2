"""Re-ranking text→image search results with a fusion model's image-text matching head.

The dual encoder finds candidates fast but reads image and text apart; the ITM head
(models/fusion.py) reads them together, so it can check what a caption says about an image
(which object is where, which colour is which). It is much slower per pair, so it only
re-scores the top N candidates:

    reranker = ITMReranker("runs/fusion/model")
    hits = searcher.search("a dog on a beach", k=10, reranker=reranker, rerank_top=50)

Re-ranking only reorders the candidates: every result was among the first N of the plain
search. They are ordered by the sum of the two models' logits, as ALBEF's retrieval does
(eval/rerank.py): the ITM log-odds plus the dual encoder's logit scale times the cosine, so a
head unsure of a pair leaves the dual encoder's order. A re-ranked hit keeps its cosine as
`score` and carries P(match) from the ITM head as `match`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from polymodal.errors import DataError
from polymodal.index.reader import image_ref

if TYPE_CHECKING:
    from polymodal.index.search import Hit


class ITMReranker:
    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = 32) -> None:
        from polymodal.checkpoint import read_config
        from polymodal.factory import get_transforms
        from polymodal.task_models import load_fusion_model

        self.model, self.tokenizer = load_fusion_model(model_dir, device)
        assert self.model.model_config is not None
        self.model_id = str(read_config(model_dir, type(self.model.model_config))[0].get("model_id", ""))
        self.transform = get_transforms(self.model.model_config.preprocess)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def log_odds(self, text: str, images: list[bytes]) -> np.ndarray:
        """The ITM head's log-odds that `text` describes the image, for each encoded image."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = torch.stack([self.transform(data) for data in chunk]).to(self.device)
            tokens = self.tokenizer([text] * len(chunk)).to(self.device)
            image = self.model.image_tokens(pixels)
            out.append(self.model.match_logit(tokens.input_ids, tokens.attention_mask, image).float().cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0, np.float64)

    def match(self, text: str, images: list[bytes]) -> np.ndarray:
        """P(`text` describes the image) for each encoded image."""
        return 1.0 / (1.0 + np.exp(-self.log_odds(text, images)))

    def rerank(self, text: str, hits: list[Hit], dual_weight: float) -> list[Hit]:
        """The same image hits, ordered by ITM log-odds + `dual_weight` × cosine (the dual
        encoder's logit scale; ties keep its order), each with its P(match)."""
        if any(h.modality != "image" for h in hits):
            raise DataError("ITM re-ranking scores images: search with modality image")
        log_odds = self.log_odds(text, [image_ref(h).read_bytes() for h in hits])
        combined = [float(log_odds[i]) + dual_weight * hit.score for i, hit in enumerate(hits)]
        order = sorted(range(len(hits)), key=lambda i: (-combined[i], i))
        return [replace(hits[i], match=float(1.0 / (1.0 + np.exp(-log_odds[i])))) for i in order]
