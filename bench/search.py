"""Search benchmarks, side by side in one run on one machine:

1. Exact search over 1M x 512 vectors, one query at a time (the bandwidth-bound case):
   polymodal's exact backend (fp32, int8, binary codes) and faiss (IndexFlatIP,
   IndexScalarQuantizer 8-bit, IndexBinaryFlat), against the memory-bandwidth floor
   (bytes scanned / read bandwidth), with the bandwidth measured here. The vectors are
   SYNTHETIC (normalised Gaussian): scan speed does not depend on their content.
2. HNSW text→image: queries/s at recall@10 >= 0.95 (against exact search) for polymodal's
   hnsw backend (faiss's graph) and hnswlib, same vectors, same M and ef_construction,
   same threads, sweeping ef_search. The vectors are REAL: every image of ../shared/data
   (Flickr8k, Tiny ImageNet train+val, CIFAR-10 test, emoji, icons: ~61k) embedded by
   our best Flickr8k model, and its Flickr8k captions as queries.

    python bench/search.py [--model runs/exp-flickr-tin-30ep/model] [--store bench/stores/shared.pm]

Writes bench/results/search.json. The store is built on the first run (`polymodal index`
of each source; its ingest rate is recorded too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import THREADS, read_bandwidth_gbs, write_result

from polymodal.index.api import index
from polymodal.index.backends import make_backend
from polymodal.index.pipeline import IndexOptions
from polymodal.index.store import Store
from polymodal.index.topk import exact_top_k

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = ("flickr8k", "tiny-imagenet", "cifar10-test", "emoji", "tabler-icons")
EF_SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)
TARGET_RECALL = 0.95


def per_query_ms(search: Any, queries: np.ndarray, repeats: int = 1) -> float:
    search(queries[:1])  # warm-up: page in, allocate
    times = []
    for q in queries:
        start = time.perf_counter()
        for _ in range(repeats):
            search(q[None])
        times.append((time.perf_counter() - start) / repeats)
    return 1000 * statistics.median(times)


def faiss_exact(quantizer: str, vectors: np.ndarray) -> Any:
    """The faiss index a user would pick for exact search over these codes, as a search function."""
    import faiss

    dim = vectors.shape[1]
    if quantizer == "binary":
        binary = faiss.IndexBinaryFlat(dim)
        binary.add(np.packbits(vectors > 0, axis=1))
        return lambda q: binary.search(np.packbits(q > 0, axis=1), 10)
    if quantizer == "int8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[:100_000])
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return lambda q: index.search(q, 10)


def compare_exact(quantizer: str, vectors: np.ndarray, queries: np.ndarray, bandwidth_gbs: float) -> dict[str, Any]:
    ids = np.arange(len(vectors), dtype=np.int64)
    ours = make_backend("exact", vectors.shape[1], quantizer=quantizer)
    ours.build(ids, vectors)
    floor_ms = 1000 * ours.nbytes / (bandwidth_gbs * 1e9)
    ours_ms = per_query_ms(lambda q: ours.search(q, 10), queries)
    peer_ms = per_query_ms(faiss_exact(quantizer, vectors), queries)
    row = {"bytes_scanned": ours.nbytes, "floor_ms": round(floor_ms, 3), "polymodal_ms": round(ours_ms, 3),
           "faiss_ms": round(peer_ms, 3), "polymodal_vs_floor": round(ours_ms / floor_ms, 2),
           "faiss_vs_floor": round(peer_ms / floor_ms, 2), "polymodal_speed_vs_faiss": round(peer_ms / ours_ms, 3)}
    if quantizer == "binary":  # the binary *backend* runs faiss's popcount kernel; the codes path is numpy
        backend = make_backend("binary", vectors.shape[1])
        backend.build(ids, vectors)
        row["polymodal_binary_backend_ms"] = round(per_query_ms(lambda q: backend.search(q, 10), queries), 3)
    return row


def exact_at_1m(bandwidth_gbs: float, n: int = 1_000_000, dim: int = 512, n_queries: int = 20) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = 0.1 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries = vectors[rng.choice(n, n_queries, replace=False)] + noise
    out: dict[str, Any] = {"n": n, "dim": dim, "vectors": "synthetic (normalised Gaussian)", "queries": n_queries}
    for quantizer in ("fp32", "int8", "binary"):
        out[quantizer] = compare_exact(quantizer, vectors, queries, bandwidth_gbs)
        print(quantizer, out[quantizer], flush=True)
    return out


def real_vectors(store_path: Path, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    ingest: dict[str, Any] = {}
    if not (store_path / "manifest.json").exists():
        store_path.parent.mkdir(parents=True, exist_ok=True)
        for name in SOURCES:
            start = time.perf_counter()
            result = index(str(DATA / name), store=store_path, model=model,
                           options=IndexOptions(batch_size=128, num_workers=1))
            report = result.reports[0]
            ingest[name] = {"images": report.embedded, "captions": report.captions_added,
                            "seconds": round(time.perf_counter() - start, 1),
                            "images_per_s": round(report.embedded / (time.perf_counter() - start), 1),
                            "skipped": len(report.skipped)}
            print("indexed", name, ingest[name], flush=True)
    with Store(store_path) as store:
        image_ids, images = store.live_vectors("image")
        _, texts = store.live_vectors("text")
    return image_ids, images, texts, ingest


def hnsw_vs_hnswlib(image_ids: np.ndarray, images: np.ndarray, texts: np.ndarray, n_queries: int = 2000,
                    m: int = 32, ef_construction: int = 100) -> dict[str, Any]:
    import faiss
    import hnswlib

    rng = np.random.default_rng(0)
    queries = np.ascontiguousarray(texts[rng.choice(len(texts), n_queries, replace=False)])
    _, truth = exact_top_k(queries, images, image_ids, 10)
    faiss.omp_set_num_threads(THREADS)
    dim = images.shape[1]

    start = time.perf_counter()
    ours = make_backend("hnsw", dim, m=m, ef_construction=ef_construction)
    ours.build(image_ids, images)
    ours_build = time.perf_counter() - start
    start = time.perf_counter()
    peer = hnswlib.Index(space="ip", dim=dim)
    peer.init_index(max_elements=len(images), M=m, ef_construction=ef_construction, random_seed=0)
    peer.set_num_threads(THREADS)
    peer.add_items(images, image_ids)
    peer_build = time.perf_counter() - start

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))

    sweep = {"polymodal": [], "hnswlib": []}
    for ef in EF_SWEEP:
        ours.ef_search = ef  # type: ignore[attr-defined]
        ours.search(queries[:10], 10)
        start = time.perf_counter()
        _, found = ours.search(queries, 10)
        sweep["polymodal"].append({"ef": ef, "recall": round(recall(found), 4),
                                   "qps": round(n_queries / (time.perf_counter() - start), 1)})
        peer.set_ef(ef)
        peer.knn_query(queries[:10], k=10, num_threads=THREADS)
        start = time.perf_counter()
        labels, _ = peer.knn_query(queries, k=10, num_threads=THREADS)
        sweep["hnswlib"].append({"ef": ef, "recall": round(recall(labels.astype(np.int64)), 4),
                                 "qps": round(n_queries / (time.perf_counter() - start), 1)})
        print(ef, sweep["polymodal"][-1], sweep["hnswlib"][-1], flush=True)

    def at_target(points: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((p for p in points if p["recall"] >= TARGET_RECALL), None)

    ours_at, peer_at = at_target(sweep["polymodal"]), at_target(sweep["hnswlib"])
    return {"database": len(images), "dim": dim, "queries": n_queries, "query_kind": "Flickr8k captions (text→image)",
            "m": m, "ef_construction": ef_construction, "threads": THREADS,
            "build_s": {"polymodal": round(ours_build, 2), "hnswlib": round(peer_build, 2)},
            "at_recall_0.95": {"polymodal": ours_at, "hnswlib": peer_at,
                               "qps_ratio": round(ours_at["qps"] / peer_at["qps"], 3) if ours_at and peer_at else None},
            "sweep": sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/exp-flickr-tin-30ep/model")
    parser.add_argument("--store", type=Path, default=Path("bench/stores/shared.pm"))
    parser.add_argument("--skip-1m", action="store_true", help="Only the HNSW comparison.")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    results: dict[str, Any] = {}
    image_ids, images, texts, ingest = real_vectors(args.store, args.model)
    results["ingest"] = ingest or "store existed; not re-measured"
    results["hnsw_text_to_image"] = hnsw_vs_hnswlib(image_ids, images, texts)
    if not args.skip_1m:
        bandwidth = read_bandwidth_gbs()
        results["read_bandwidth_gbs"] = round(bandwidth, 2)
        results["exact_1m"] = exact_at_1m(bandwidth)
    print("wrote", write_result("search", results))


if __name__ == "__main__":
    main()
