"""Search benchmarks, side by side in one run on one machine:

1. Exact search over 1M x 512 vectors (`--parts exact`, writes bench/results/search_exact.json):
   one query at a time (the bandwidth-bound case), polymodal's exact backend over fp32, int8
   and binary codes against faiss (IndexFlatIP, IndexScalarQuantizer 8-bit, IndexBinaryFlat)
   and against the memory-bandwidth floor: the bytes of the codes at the read bandwidth
   measured right before each query (torch reading 512 MB, 2 threads), which also leaves
   every call the same cold cache; ratios are medians over the queries. Also polymodal's numpy path
   (POLYMODAL_NATIVE=0), 64 queries at once, and one query restricted to 5%, 20% and 50%
   of the items (fp32 and int8; faiss with an IDSelectorBatch). The vectors are SYNTHETIC
   (normalised Gaussian): scan speed does not depend on their content.
2. HNSW text→image (`--parts hnsw`, writes bench/results/search_hnsw.json): queries/s at
   recall@10 >= 0.95 (against exact search over the fp32 vectors) for polymodal's hnsw
   backend (faiss's graph) over fp16 vectors (what `--memory-budget` picks: "polymodal"),
   fp32 vectors and int8 codes, and hnswlib (fp32), same vectors, same M and
   ef_construction, same threads, sweeping ef_search.
   The vectors are REAL: every image of ../shared/data (Flickr8k, Tiny ImageNet train+val,
   CIFAR-10 test, emoji, icons: ~61k) embedded by our best Flickr8k model (or the one
   `--model` names), and its Flickr8k captions as queries. The store is built on the first run (`polymodal
   index` of each source; its ingest rate is recorded too).

    python bench/search.py [--parts exact,hnsw] [--model runs/exp-flickr-tin-30ep/model]
"""

from __future__ import annotations

import os

# OpenMP threads (torch's and faiss's) spin for 10-20 ms after their work by default and
# take the cores from whatever runs next: a 15 ms int8 scan took 21 ms right after a torch
# product. Pausing between the timed calls instead lets the CPU idle, which slows the next
# short call (a 1.4 ms scan took 2.4 ms after a 30 ms pause). With passive waiting, every
# library's threads sleep as soon as their work ends and the calls run back to back.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import THREADS, parse_names, write_result

from polymodal.index import native
from polymodal.index.api import index
from polymodal.index.backends import make_backend
from polymodal.index.pipeline import IndexOptions
from polymodal.index.store import Store
from polymodal.index.topk import exact_top_k

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = ("flickr8k", "tiny-imagenet", "cifar10-test", "emoji", "tabler-icons")
EF_SWEEP = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)
TARGET_RECALL = 0.95
PARTS = ("exact", "hnsw")
#: our HNSW variants by result name: the one --memory-budget picks first, then the others
OUR_HNSW = {"polymodal": "fp16", "polymodal_fp32": "fp32", "polymodal_int8": "int8"}


READ_BYTES = 512 << 20  # read before every timed call: many times any L3, and long enough to time well


class Timings:
    """Milliseconds of each call of each run, and the memory read bandwidth measured just
    before each call (GB/s): torch reading a 512 MB buffer with 2 threads."""

    def __init__(self, names: list[str]) -> None:
        self.ms: dict[str, list[float]] = {name: [] for name in names}
        self.read_gbs: dict[str, list[float]] = {name: [] for name in names}

    def median_ms(self, name: str) -> float:
        return round(statistics.median(self.ms[name]), 3)

    def speed_ratio(self, slower: str, faster: str) -> float:
        """Median over rounds of slower's time / faster's time (>1: `faster` is faster)."""
        return round(statistics.median(a / b for a, b in zip(self.ms[slower], self.ms[faster], strict=True)), 3)

    def vs_floor(self, name: str, nbytes: int) -> float:
        """Median over calls of the call's time / the time to read `nbytes` at the bandwidth
        measured just before it (1.0: the call ran at memory speed)."""
        return round(statistics.median(ms * gbs * 1e6 / nbytes
                                       for ms, gbs in zip(self.ms[name], self.read_gbs[name], strict=True)), 3)


def interleaved(runs: dict[str, Callable[[int], object]], rounds: int = 20) -> Timings:
    """Each run called in turn (a, b, c, a, b, c, ...) with query number `round`, right after
    a timed read of a buffer larger than the caches. The read gives the bandwidth of the
    moment: this shared machine's moves between about 37 and 64 GB/s for seconds at a
    time, so each call is held to its own floor. It also leaves every call the same empty
    cache: the 64 MB of sign bits of 1M vectors are twice a 32 MB L3, and a scan right
    after another of the same codes ran 20% faster than one after faiss's scan of its own
    copy."""
    buffer = torch.ones(READ_BYTES // 4)
    for run in runs.values():
        run(0)  # warm-up: page in, allocate
    timings = Timings(list(runs))
    for round_ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            buffer.max()
            middle = time.perf_counter()
            run(round_)
            end = time.perf_counter()
            timings.read_gbs[name].append(READ_BYTES / (middle - start) / 1e9)
            timings.ms[name].append(1000 * (end - middle))
    return timings


def faiss_exact(quantizer: str, vectors: np.ndarray) -> Callable[[np.ndarray, int], Any]:
    """The faiss index a user would pick for exact search over these codes, as search(queries, k)."""
    import faiss

    if quantizer == "binary":
        binary = faiss.IndexBinaryFlat(vectors.shape[1])
        binary.add(np.packbits(vectors > 0, axis=1))
        return lambda q, k: binary.search(np.packbits(q > 0, axis=1), k)
    index = faiss_index(quantizer, vectors)
    return lambda q, k: index.search(q, k)


def faiss_index(quantizer: str, vectors: np.ndarray) -> Any:
    """faiss's exact index over fp32 vectors or int8 codes."""
    import faiss

    dim = vectors.shape[1]
    if quantizer == "int8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[:100_000])
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def compare_exact(quantizer: str, vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    ids = np.arange(len(vectors), dtype=np.int64)
    ours = make_backend("exact", vectors.shape[1], quantizer=quantizer)
    ours.build(ids, vectors)
    peer = faiss_exact(quantizer, vectors)

    def ours_numpy(j: int) -> object:
        with native.disabled():
            return ours.search(queries[j:j + 1], 10)

    runs: dict[str, Callable[[int], object]] = {
        "polymodal": lambda j: ours.search(queries[j:j + 1], 10),
        "faiss": lambda j: peer(queries[j:j + 1], 10),
        "polymodal_numpy": ours_numpy}
    if quantizer == "binary":  # the binary *backend* runs faiss's popcount kernel
        backend = make_backend("binary", vectors.shape[1])
        backend.build(ids, vectors)
        runs["polymodal_binary_backend"] = lambda j: backend.search(queries[j:j + 1], 10)
    t = interleaved(runs)
    read_gbs = statistics.median(g for gbs in t.read_gbs.values() for g in gbs)
    row = {"bytes_scanned": ours.nbytes, "read_gbs": round(read_gbs, 1),
           "floor_ms": round(1000 * ours.nbytes / (read_gbs * 1e9), 3), "polymodal_ms": t.median_ms("polymodal"),
           "faiss_ms": t.median_ms("faiss"), "polymodal_numpy_ms": t.median_ms("polymodal_numpy"),
           "polymodal_vs_floor": t.vs_floor("polymodal", ours.nbytes),
           "faiss_vs_floor": t.vs_floor("faiss", ours.nbytes),
           "polymodal_speed_vs_faiss": t.speed_ratio("faiss", "polymodal"),
           "polymodal_speed_vs_numpy_path": t.speed_ratio("polymodal_numpy", "polymodal")}
    if "polymodal_binary_backend" in runs:
        row["polymodal_binary_backend_ms"] = t.median_ms("polymodal_binary_backend")
        row["binary_backend_vs_floor"] = t.vs_floor("polymodal_binary_backend", ours.nbytes)
    return row


def batched_exact(quantizer: str, vectors: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Many queries at once (an evaluation, dedup): ms per query, polymodal against faiss."""
    ours = make_backend("exact", vectors.shape[1], quantizer=quantizer)
    ours.build(np.arange(len(vectors), dtype=np.int64), vectors)
    peer = faiss_exact(quantizer, vectors)
    t = interleaved({"polymodal": lambda _: ours.search(queries, 10), "faiss": lambda _: peer(queries, 10)}, rounds=5)
    return {"queries": len(queries), "polymodal_ms": round(t.median_ms("polymodal") / len(queries), 3),
            "faiss_ms": round(t.median_ms("faiss") / len(queries), 3),
            "polymodal_speed_vs_faiss": t.speed_ratio("faiss", "polymodal")}


def filtered_exact(quantizer: str, vectors: np.ndarray, queries: np.ndarray,
                   fractions: tuple[float, ...] = (0.05, 0.2, 0.5)) -> dict[str, Any]:
    """One query restricted to a random share of the items (what `--where` and `--path`
    give): polymodal's `search(..., allowed=ids)` against faiss with an IDSelectorBatch
    (`SearchParameters(sel=...)`), and polymodal's numpy path, which copies the allowed rows."""
    import faiss

    ids = np.arange(len(vectors), dtype=np.int64)
    ours = make_backend("exact", vectors.shape[1], quantizer=quantizer)
    ours.build(ids, vectors)
    index = faiss_index(quantizer, vectors)
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    for fraction in fractions:
        allowed = np.sort(rng.choice(len(vectors), int(fraction * len(vectors)), replace=False)).astype(np.int64)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        t = interleaved(filtered_runs(ours, index, queries, allowed, params), rounds=10)
        _, found = ours.search(queries, 10, allowed=allowed)
        _, peer_found = index.search(queries, 10, params=params)
        out[f"{fraction:g}"] = {
            "allowed": len(allowed), "polymodal_ms": t.median_ms("polymodal"), "faiss_ms": t.median_ms("faiss"),
            "polymodal_numpy_ms": t.median_ms("polymodal_numpy"),
            "polymodal_speed_vs_faiss": t.speed_ratio("faiss", "polymodal"),
            "polymodal_speed_vs_numpy_path": t.speed_ratio("polymodal_numpy", "polymodal"),
            "all_results_allowed": bool(np.isin(found, allowed).all()),
            "top10_overlap_with_faiss": round(float(np.mean([len(set(a) & set(b)) / 10
                                                             for a, b in zip(found, peer_found, strict=True)])), 4)}
        print(quantizer, "filtered", fraction, out[f"{fraction:g}"], flush=True)
    return out


def filtered_runs(ours: Any, index: Any, queries: np.ndarray, allowed: np.ndarray,
                  params: Any) -> dict[str, Callable[[int], object]]:
    def numpy_path(j: int) -> object:
        with native.disabled():
            return ours.search(queries[j:j + 1], 10, allowed=allowed)

    return {"polymodal": lambda j: ours.search(queries[j:j + 1], 10, allowed=allowed),
            "faiss": lambda j: index.search(queries[j:j + 1], 10, params=params),
            "polymodal_numpy": numpy_path}


def exact_at_1m(n: int = 1_000_000, dim: int = 512, n_queries: int = 20, batch: int = 64) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = 0.1 * rng.standard_normal((max(n_queries, batch), dim), dtype=np.float32)
    queries = vectors[rng.choice(n, len(noise), replace=False)] + noise
    out: dict[str, Any] = {"n": n, "dim": dim, "vectors": "synthetic (normalised Gaussian)", "queries": n_queries,
                           "kernels": native.isa(), "threads": THREADS, "batched": {}, "filtered": {}}
    for quantizer in ("fp32", "int8", "binary"):
        out[quantizer] = compare_exact(quantizer, vectors, queries[:n_queries])
        print(quantizer, out[quantizer], flush=True)
        out["batched"][quantizer] = batched_exact(quantizer, vectors, queries[:batch])
        print(quantizer, batch, "queries at once", out["batched"][quantizer], flush=True)
        if quantizer != "binary":  # faiss's binary index takes no ID selector
            out["filtered"][quantizer] = filtered_exact(quantizer, vectors, queries[:n_queries])
    return out


def real_vectors(store_path: Path, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    ingest: dict[str, Any] = {}
    if not (store_path / "manifest.json").exists():
        store_path.parent.mkdir(parents=True, exist_ok=True)
        for name in SOURCES:
            start = time.perf_counter()
            result = index(str(DATA / name), store=store_path, model=model,
                           options=IndexOptions(batch_size=128))
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

    ours, build_s = {}, {}
    for name, quantizer in OUR_HNSW.items():
        start = time.perf_counter()
        ours[name] = make_backend("hnsw", dim, m=m, ef_construction=ef_construction, quantizer=quantizer)
        ours[name].build(image_ids, images)
        build_s[name] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    peer = hnswlib.Index(space="ip", dim=dim)
    peer.init_index(max_elements=len(images), M=m, ef_construction=ef_construction, random_seed=0)
    peer.set_num_threads(THREADS)
    peer.add_items(images, image_ids)
    build_s["hnswlib"] = round(time.perf_counter() - start, 2)

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))

    sweep: dict[str, list[dict[str, Any]]] = {name: [] for name in [*OUR_HNSW, "hnswlib"]}
    for ef in EF_SWEEP:
        for name, backend in ours.items():
            backend.ef_search = ef  # type: ignore[attr-defined]
            backend.search(queries[:10], 10)
            start = time.perf_counter()
            _, found = backend.search(queries, 10)
            sweep[name].append({"ef": ef, "recall": round(recall(found), 4),
                                "qps": round(n_queries / (time.perf_counter() - start), 1)})
        peer.set_ef(ef)
        peer.knn_query(queries[:10], k=10, num_threads=THREADS)
        start = time.perf_counter()
        labels, _ = peer.knn_query(queries, k=10, num_threads=THREADS)
        sweep["hnswlib"].append({"ef": ef, "recall": round(recall(labels.astype(np.int64)), 4),
                                 "qps": round(n_queries / (time.perf_counter() - start), 1)})
        print(ef, {name: points[-1] for name, points in sweep.items()}, flush=True)

    def at_target(points: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((p for p in points if p["recall"] >= TARGET_RECALL), None)

    at = {name: at_target(points) for name, points in sweep.items()}
    peer_at = at["hnswlib"]
    ratios = {f"qps_ratio{name.removeprefix('polymodal')}": round(point["qps"] / peer_at["qps"], 3)
              for name, point in at.items() if name != "hnswlib" and point and peer_at}
    return {"database": len(images), "dim": dim, "queries": n_queries, "query_kind": "Flickr8k captions (text→image)",
            "m": m, "ef_construction": ef_construction, "threads": THREADS,
            "polymodal": "the hnsw backend over fp16 vectors, as --memory-budget builds it",
            "build_s": build_s, "at_recall_0.95": {**at, **ratios},
            "sweep": sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated, from: {', '.join(PARTS)}.")
    parser.add_argument("--model", default="runs/exp-flickr-tin-30ep/model", help="The model of the HNSW store.")
    parser.add_argument("--store", type=Path, default=Path("bench/stores/shared.pm"))
    args = parser.parse_args()
    parts = parse_names(parser, args.parts, PARTS, "part")
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    if "exact" in parts:
        print("wrote", write_result("search_exact", {"exact_1m": exact_at_1m()}))
    if "hnsw" in parts:
        if not (args.store / "manifest.json").exists() and not Path(args.model).is_dir():
            raise SystemExit(f"the HNSW part embeds ../shared/data with {args.model}, which is not here: train it "
                             "(recipes/tinyimagenet-pretrain.toml, then recipes/flickr8k-from-tinyimagenet.toml), "
                             "name another model with --model, or run --parts exact")
        image_ids, images, texts, ingest = real_vectors(args.store, args.model)
        results = {"ingest": ingest or "store existed; not re-measured",
                   "hnsw_text_to_image": hnsw_vs_hnswlib(image_ids, images, texts)}
        print("wrote", write_result("search_hnsw", results))


if __name__ == "__main__":
    main()
