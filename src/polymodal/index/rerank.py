"""Re-ranking text→image search results with a fusion model's image-text matching head.

The dual encoder finds candidates fast but reads image and text apart; the ITM head
(models/fusion.py) reads them together, so it can check what a caption says about an image
(which object is where, which colour is which). It is much slower per pair, so it only
re-scores the top N candidates:

    reranker = ITMReranker("runs/fusion/model")
    hits = searcher.search("a dog on a beach", k=10, reranker=reranker, rerank_top=50)

Re-ranking only reorders the candidates: every result was among the first N of the plain
search. The score of a re-ranked hit is P(match) from the ITM head.
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

    def scores(self, text: str, hits: list[Hit]) -> np.ndarray:
        """P(`text` describes the image) for each image hit."""
        if any(h.modality != "image" for h in hits):
            raise DataError("ITM re-ranking scores images: search with modality image")
        return self.match(text, [image_ref(h).read_bytes() for h in hits])

    @torch.no_grad()
    def match(self, text: str, images: list[bytes]) -> np.ndarray:
        """P(`text` describes the image) for each encoded image."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = torch.stack([self.transform(data) for data in chunk]).to(self.device)
            tokens = self.tokenizer([text] * len(chunk)).to(self.device)
            image = self.model.image_tokens(pixels)
            out.append(self.model.match_probability(tokens.input_ids, tokens.attention_mask, image).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def rerank(self, text: str, hits: list[Hit]) -> list[Hit]:
        """The same hits, ordered by P(match) (ties keep the dual encoder's order)."""
        probabilities = self.scores(text, hits)
        order = sorted(range(len(hits)), key=lambda i: (-float(probabilities[i]), i))
        return [replace(hits[i], score=float(probabilities[i])) for i in order]
