"""Searching a store: text→image, image→image, image→text, query arithmetic, "more like
these", metadata filters.

    searcher = Searcher("photos.pm")                       # the store's own model
    hits = searcher.search("beach + 2:dog - people", k=10)
    hits = searcher.more_like([12, 40], k=10)
    hits = searcher.search("photos/cat.jpg", modality="text")   # image -> captions

Filters are pushed into the search as an id allow-list when they keep few items, and
applied to an over-fetched result otherwise (cheaper when most items pass).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from polymodal.errors import DataError, StoreError
from polymodal.eval.embed import check_finite
from polymodal.eval.runner import LoadedModel
from polymodal.index.backends import Backend, ExactBackend
from polymodal.index.build import index_info, load_index
from polymodal.index.query import parse_query
from polymodal.index.store import MODALITIES, Store
from polymodal.inference import embed_texts, model_device
from polymodal.transforms import ImageSource

if TYPE_CHECKING:
    from polymodal.index.rerank import ITMReranker

# Below this share of items passing the filter, search only among them; above, over-fetch.
PUSH_DOWN_BELOW = 0.1


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    uri: str
    modality: str
    text: str | None
    metadata: dict[str, Any]
    match: float | None = None  # P(match) from a fusion model's ITM head, when it re-ranked this hit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Filter:
    """Keep items whose metadata has each key = value, and whose uri matches `uri_glob`."""

    metadata: tuple[tuple[str, str], ...] = ()
    uri_glob: str = ""

    def __bool__(self) -> bool:
        return bool(self.metadata or self.uri_glob)


class Searcher:
    def __init__(self, store_path: str | Path, model: str | None = None, device: str = "") -> None:
        self.store = Store(store_path)
        self._model_spec, self._device = model, device
        self._loaded: LoadedModel | None = None
        self._indexes: dict[str, tuple[Backend, int]] = {}
        if model:  # refuse a foreign model now, not at the first query
            self._model()

    def close(self) -> None:
        self.store.close()

    def reload(self) -> None:
        """Drop cached indexes (after the store changed under this searcher)."""
        self._indexes.clear()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- queries

    def search(self, query: str, k: int = 10, modality: str = "image", where: Filter = Filter(),
               reranker: ITMReranker | None = None, rerank_top: int = 50) -> list[Hit]:
        """Top-k items of `modality` for a query string (text, image paths, arithmetic).
        With a `reranker`, the top `rerank_top` images are re-ordered by its ITM log-odds
        plus the query model's logits (index/rerank.py)."""
        if reranker is None:
            return self.search_vector(self.query_vector(query), k, modality, where)
        if not rerankable(query, modality):
            raise DataError("re-ranking reads the query as a caption of an image: give plain text and search images")
        if rerank_top < k:
            raise DataError(f"re-rank at least k={k} candidates, got {rerank_top}")
        candidates = self.search_vector(self.query_vector(query), rerank_top, modality, where)
        scale, _ = self._model().model.logit_params()
        return reranker.rerank(parse_query(query)[0].text, candidates, float(scale.detach()))[:k]

    def more_like(self, ids: list[int], k: int = 10, modality: str = "image", where: Filter = Filter(),
                  include_given: bool = False) -> list[Hit]:
        """Items like the mean of items `ids` (any modality); the given ones are left out."""
        if not ids:
            raise DataError("more-like-these needs at least one item id")
        vector = _normalise(self.store.vectors(ids).mean(axis=0))
        hits = self.search_vector(vector, k + (0 if include_given else len(ids)), modality, where)
        given = set(ids)
        return [h for h in hits if include_given or h.id not in given][:k]

    def query_vector(self, query: str) -> np.ndarray:
        terms = parse_query(query)
        loaded = self._model()
        total = np.zeros(self.store.manifest.dim, dtype=np.float32)
        for term in terms:
            total += term.weight * self._embed_term(loaded, term.text, term.image)
        if not np.linalg.norm(total) > 1e-6:
            raise DataError(f"query {query!r}: its terms cancel out")
        return _normalise(total)

    def search_vector(self, vector: np.ndarray, k: int = 10, modality: str = "image",
                      where: Filter = Filter()) -> list[Hit]:
        if modality not in MODALITIES:
            raise DataError(f"unknown modality {modality!r}; one of {list(MODALITIES)}")
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        loaded = self._index(modality)
        if loaded is None:
            return []
        index, rerank = loaded
        fetch = k * rerank if rerank > 1 else k
        allowed = self._allowed(modality, where) if where else None
        if allowed is None:
            scores, ids = index.search(vector, fetch)
        elif len(allowed) == 0:
            return []
        elif len(allowed) < PUSH_DOWN_BELOW * len(index):
            scores, ids = index.search(vector, fetch, allowed=allowed)
        else:  # most items pass: fetch enough extra that k of them survive, then filter
            wide = min(len(index), int(math.ceil(2 * fetch * len(index) / len(allowed))))
            scores, ids = index.search(vector, wide)
            keep = np.isin(ids[0], allowed)
            if keep.sum() < min(fetch, len(allowed)):
                scores, ids = index.search(vector, fetch, allowed=allowed)
            else:
                scores, ids = scores[:, keep], ids[:, keep]
        found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
        if rerank > 1 and found:  # re-score the candidates with the stored float32 vectors
            exact = self.store.vectors([i for _, i in found]) @ vector.reshape(-1)
            found = sorted(((float(s), i) for s, (_, i) in zip(exact, found, strict=True)),
                           key=lambda pair: (-pair[0], pair[1]))
        found = found[:k]
        items = self.store.items([i for _, i in found])
        return [Hit(item.id, score, item.uri, item.modality, item.text, item.metadata)
                for (score, _), item in zip(found, items, strict=True)]

    # ----------------------------------------------------------------- parts

    def _model(self) -> LoadedModel:
        if self._loaded is None:
            from polymodal.index.api import store_model

            self._loaded = store_model(self.store.path, self._model_spec, self._device)
        return self._loaded

    @property
    def model(self) -> LoadedModel:
        """The store's model (loaded on first use)."""
        return self._model()

    @torch.no_grad()
    def embed_image(self, image: ImageSource) -> np.ndarray:
        """The (dim,) embedding of an image (a path, encoded bytes or a Pillow image)."""
        loaded = self._model()
        pixels = loaded.transform(image).unsqueeze(0).to(model_device(loaded.model))
        embeds = loaded.model.eval().encode_image(pixels).float()
        check_finite(embeds, "image")
        return embeds[0].cpu().numpy()

    def _embed_term(self, loaded: LoadedModel, text: str, image: str) -> np.ndarray:
        if text:
            return embed_texts(loaded.model, loaded.tokenizer, [text])[0].cpu().numpy()
        return self.embed_image(Path(image))

    def _index(self, modality: str) -> tuple[Backend, int] | None:
        """The modality's index and its re-rank factor; None when the store has no such items."""
        if modality not in self._indexes:
            index = load_index(self.store, modality)
            rerank = int(index_info(self.store.path).get("rerank", 0))
            if index is None:  # never built, or stale after a crash: exact search over the store
                ids, vectors = self.store.live_vectors(modality)
                if not len(ids):
                    return None
                index, rerank = ExactBackend(self.store.manifest.dim), 0
                index.build(ids, vectors)
            self._indexes[modality] = (index, rerank)
        return self._indexes[modality]

    def _allowed(self, modality: str, where: Filter) -> np.ndarray:
        sql, args = "SELECT id FROM items WHERE deleted IS NULL AND modality = ?", [modality]
        for key, value in where.metadata:
            sql += " AND CAST(json_extract(metadata, ?) AS TEXT) = ?"
            args += ["$." + json_key(key), value]
        if where.uri_glob:
            sql += " AND uri GLOB ?"
            args.append(where.uri_glob)
        return np.array([i for (i,) in self.store.db.execute(sql, args)], dtype=np.int64)


def json_key(key: str) -> str:
    if not key or not all(c.isalnum() or c in "_-" for c in key):
        raise DataError(f"filter key {key!r}: use letters, digits, _ and -")
    return f'"{key}"'


def parse_filters(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """["color=red", "source=/data"] -> (("color", "red"), ("source", "/data"))."""
    out = []
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise DataError(f"filter {spec!r}: write KEY=VALUE")
        json_key(key)
        out.append((key, value))
    return tuple(out)


def _normalise(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm == 0 or not math.isfinite(norm):
        raise StoreError("cannot normalise a zero or non-finite query vector")
    return (vector / norm).astype(np.float32)


def rerankable(query: str, modality: str) -> bool:
    """Whether a fusion model can re-rank this search: plain text (no arithmetic, no image
    path) read as the caption of the images searched for."""
    terms = parse_query(query)
    return modality == "image" and len(terms) == 1 and bool(terms[0].text) and terms[0].weight == 1
