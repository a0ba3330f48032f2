"""`polymodal eval index STORE`: every quantiser and backend on the store's own vectors.

For each configuration: bytes per vector, build time, queries per second, and recall@10
against exact float32 search, separately for text→image (caption queries), image→image
and image→text. When the store holds captions, also the task numbers those answers give:
text→image R@K (the caption's image in the top K) and image→text P@K (share of the top K
that are the image's own captions). One table, a recall-vs-QPS plot, and a Pareto flag
on every row no other row beats on recall, speed and size at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import StoreError
from polymodal.eval.report import Evaluation, Plot
from polymodal.index.backends import Backend, make_backend
from polymodal.index.quantizers import training_sample
from polymodal.index.store import Store
from polymodal.index.topk import exact_top_k

K = 10


@dataclass(frozen=True)
class Config:
    label: str
    backend: str
    params: dict[str, Any] = field(default_factory=dict)
    rerank: int = 0


DEFAULT_CONFIGS = (
    Config("exact fp32", "exact", {"quantizer": "fp32"}),
    Config("exact fp16", "exact", {"quantizer": "fp16"}),
    Config("exact int8", "exact", {"quantizer": "int8"}),
    Config("exact binary", "exact", {"quantizer": "binary"}),
    Config("exact binary + rerank x10", "exact", {"quantizer": "binary"}, rerank=10),
    Config("exact pq", "exact", {"quantizer": "pq"}),
    Config("exact pq + rerank x10", "exact", {"quantizer": "pq"}, rerank=10),
    Config("hnsw fp32", "hnsw", {"m": 32, "ef_search": 64}),
    Config("hnsw int8", "hnsw", {"m": 32, "ef_search": 64, "quantizer": "int8"}),
    Config("ivfpq", "ivfpq", {"nprobe": 16}),
    Config("ivfpq + rerank x10", "ivfpq", {"nprobe": 16}, rerank=10),
    Config("lsh", "lsh", {}),
    Config("binary (faiss)", "binary", {}),
    Config("kdtree", "kdtree", {}),
)
# The k-d tree degrades to a full scan in high dimensions: only try it where it can win.
KDTREE_MAX_DIM = 32


@dataclass
class Direction:
    name: str  # t2i | i2i | i2t
    queries: np.ndarray  # (q, d)
    target: str  # modality searched
    truth: np.ndarray  # exact fp32 top-K item ids (q, K)
    relevant: list[set[int]] | None = None  # task ground truth per query, when captions link them


def evaluate_index(store_path: str | Path, configs: Sequence[Config] = DEFAULT_CONFIGS, max_queries: int = 1000,
                   seed: int = 0) -> Evaluation:
    with Store(store_path) as store:
        items = {m: store.live_vectors(m) for m in ("image", "text")}
        caption_image = {i.id: i.metadata.get("image") for i in store.live_items("text")}
        image_uri = {i.id: i.uri for i in store.live_items("image")}
        dim = store.manifest.dim
    if not len(items["image"][0]):
        raise StoreError(f"{store_path}: no images to search")
    directions = _directions(items, caption_image, image_uri, max_queries, seed)
    sample = training_sample([v for _, v in items.values()])
    rows = []
    for config in configs:
        if config.backend == "kdtree" and dim > KDTREE_MAX_DIM:
            continue
        try:
            rows.append(_measure(config, items, directions, sample, dim))
        except StoreError as err:  # e.g. too few vectors to train PQ: say so, keep going
            rows.append({"config": config.label, "error": str(err)})
    _flag_pareto(rows)
    measured = [r for r in rows if "error" not in r]
    metrics = {f"{r['config']} recall@10": r["recall@10"] for r in measured}
    info = {"store": str(store_path), "images": len(items["image"][0]), "texts": len(items["text"][0]),
            "dim": dim, "queries": {d.name: len(d.queries) for d in directions}, "k": K}
    plot = Plot("recall_qps", "recall@10 vs queries/s (all directions)",
                {"points": [{"label": r["config"], "recall": r["recall@10"], "qps": r["qps"],
                             "pareto": r["pareto"]} for r in measured]})
    return Evaluation("index", metrics, primary_metric=next(iter(metrics)), info=info, plots=[plot],
                      tables={"backends": rows})


def _directions(items: dict[str, tuple[np.ndarray, np.ndarray]], caption_image: dict[int, str | None],
                image_uri: dict[int, str], max_queries: int, seed: int) -> list[Direction]:
    rng = np.random.default_rng(seed)
    image_ids, images = items["image"]
    text_ids, texts = items["text"]
    uri_to_image = {uri: i for i, uri in image_uri.items()}
    out = []
    picked_images = rng.choice(len(image_ids), min(max_queries, len(image_ids)), replace=False)
    if len(text_ids):
        picked_texts = rng.choice(len(text_ids), min(max_queries, len(text_ids)), replace=False)
        relevant = [{uri_to_image[u]} if (u := caption_image.get(int(text_ids[i]))) in uri_to_image else set()
                    for i in picked_texts]
        out.append(_direction("t2i", texts[picked_texts], "image", items, relevant))
    out.append(_direction("i2i", images[picked_images], "image", items))
    if len(text_ids):
        captions_of: dict[int, set[int]] = {}
        for tid in text_ids:
            image = uri_to_image.get(caption_image.get(int(tid)) or "")
            if image is not None:
                captions_of.setdefault(image, set()).add(int(tid))
        relevant = [captions_of.get(int(image_ids[i]), set()) for i in picked_images]
        out.append(_direction("i2t", images[picked_images], "text", items, relevant))
    return out


def _direction(name: str, queries: np.ndarray, target: str, items: dict[str, tuple[np.ndarray, np.ndarray]],
               relevant: list[set[int]] | None = None) -> Direction:
    ids, vectors = items[target]
    _, truth = exact_top_k(queries, vectors, ids, K)
    has_truth = relevant is not None and any(relevant)
    return Direction(name, queries, target, truth, relevant if has_truth else None)


def _measure(config: Config, items: dict[str, tuple[np.ndarray, np.ndarray]], directions: list[Direction],
             sample: np.ndarray, dim: int) -> dict[str, Any]:
    built: dict[str, Backend] = {}
    build_seconds, total_bytes, total_n = 0.0, 0, 0
    for modality in sorted({d.target for d in directions}):
        ids, vectors = items[modality]
        start = time.perf_counter()
        backend = make_backend(config.backend, dim, **config.params)
        backend.build(ids, vectors, sample)
        build_seconds += time.perf_counter() - start
        built[modality] = backend
        total_bytes += backend.nbytes
        total_n += len(ids)
    row: dict[str, Any] = {"config": config.label, "backend": config.backend, "params": config.params,
                           "rerank": config.rerank, "bytes/vector": round(total_bytes / total_n, 2),
                           "build s": round(build_seconds, 3)}
    recalls, seconds, queries = [], 0.0, 0
    for direction in directions:
        start = time.perf_counter()
        found = _search(built[direction.target], items[direction.target], direction.queries, config.rerank)
        seconds += time.perf_counter() - start
        queries += len(direction.queries)
        recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, direction.truth, strict=True)]))
        row[f"{direction.name} recall@10"] = round(recall, 4)
        recalls.append(recall)
        if direction.relevant is not None:
            row.update(_task_metrics(direction, found))
    row["recall@10"] = round(float(np.mean(recalls)), 4)
    row["qps"] = round(queries / max(seconds, 1e-9), 1)
    return row


def _search(backend: Backend, items: tuple[np.ndarray, np.ndarray], queries: np.ndarray, rerank: int) -> np.ndarray:
    if rerank <= 1:
        return backend.search(queries, K)[1]
    _, candidates = backend.search(queries, K * rerank)
    ids, vectors = items
    rows = np.searchsorted(ids, np.clip(candidates, ids[0], None))  # live_vectors are sorted by id
    scores = np.einsum("qd,qcd->qc", queries, vectors[rows])
    scores = np.where(candidates >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(candidates, order, axis=1)


def _task_metrics(direction: Direction, found: np.ndarray) -> dict[str, float]:
    assert direction.relevant is not None
    pairs = [(f, r) for f, r in zip(found, direction.relevant, strict=True) if r]
    if direction.name == "t2i":  # one relevant image per caption: R@K
        return {f"t2i task R@{k}": round(100 * float(np.mean([bool(set(f[:k]) & r) for f, r in pairs])), 2)
                for k in (1, 5, 10)}
    return {f"i2t task P@{k}": round(100 * float(np.mean([len(set(f[:k]) & r) / k for f, r in pairs])), 2)
            for k in (1, 5, 10)}


def _flag_pareto(rows: list[dict[str, Any]]) -> None:
    """A row is on the Pareto front when no other row is at least as good on recall,
    queries/s and bytes/vector and strictly better on one of them."""
    measured = [r for r in rows if "error" not in r]
    for row in measured:
        row["pareto"] = not any(
            o is not row and o["recall@10"] >= row["recall@10"] and o["qps"] >= row["qps"]
            and o["bytes/vector"] <= row["bytes/vector"]
            and (o["recall@10"], o["qps"], -o["bytes/vector"]) != (row["recall@10"], row["qps"], -row["bytes/vector"])
            for o in measured)
