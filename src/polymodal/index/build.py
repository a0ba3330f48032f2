"""Building the search index of a store: one backend per modality, under `index/`.

Quantisers and coarse centroids train on a sample mixing image and text vectors (queries
come from the other modality). The index is built in a temporary folder and renamed into
place; `index/info.json` records the store generation it covers, so a store changed
since (a crash between the last commit and the rebuild) is known to be stale and is
searched exactly instead.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymodal.checkpoint import replace_dir, write_text_atomic
from polymodal.errors import StoreError
from polymodal.index.auto import choose_index
from polymodal.index.backends import Backend, make_backend
from polymodal.index.quantizers import training_sample
from polymodal.index.store import INDEX_DIR, MODALITIES, Store

INFO_FILE = "info.json"


@dataclass(frozen=True)
class IndexSpec:
    """What index to build; unset fields keep the store's current choice (else exact fp32).

    `memory_budget` (bytes) picks backend and parameters itself (auto.choose_index);
    `rerank` r > 1 re-scores the top r x k candidates with the stored float32 vectors."""

    backend: str | None = None
    params: dict[str, Any] | None = None
    rerank: int | None = None
    memory_budget: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.backend, self.params, self.rerank, self.memory_budget))


def build_index(store: Store, backend: str | None = None, params: dict[str, Any] | None = None,
                rerank: int | None = None, memory_budget: int | None = None) -> dict[str, Any]:
    """(Re)build every modality's index (see IndexSpec for the arguments)."""
    config = store.manifest.index
    reason = ""
    if memory_budget is not None:
        choice = choose_index(max(store.count("image"), store.count("text"), 1), store.manifest.dim, memory_budget)
        backend, params, reason = choice.backend, dict(choice.params), choice.reason
    name = backend or config.get("backend", "exact")
    if params is None:
        params = dict(config.get("params", {})) if name == config.get("backend") else {}
    rerank = int(config.get("rerank", 0) if rerank is None else rerank)
    if rerank < 0:
        raise StoreError(f"rerank must be 0 (off) or a factor >= 1, got {rerank}")
    make_backend(name, store.manifest.dim, **params)  # bad names and parameters fail before any work
    generation = store.generation
    vectors = {m: store.live_vectors(m) for m in MODALITIES}
    sample = training_sample([v for _, v in vectors.values()]) if any(len(i) for i, _ in vectors.values()) else None
    tmp = store.path / f".{INDEX_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    info: dict[str, Any] = {"backend": name, "params": params, "rerank": rerank, "generation": generation,
                            "counts": {}, "bytes": {}, "build_seconds": {}, "reason": reason}
    try:
        tmp.mkdir()
        for modality, (ids, matrix) in vectors.items():
            info["counts"][modality] = len(ids)
            if len(ids):
                start = time.perf_counter()
                index = make_backend(name, store.manifest.dim, **params)
                index.build(ids, matrix, sample)
                index.save(tmp / modality)
                info["build_seconds"][modality] = round(time.perf_counter() - start, 3)
                info["bytes"][modality] = index.nbytes
                info.setdefault("chosen", {})[modality] = index.params  # with what it chose (e.g. nlist)
        write_text_atomic(tmp / INFO_FILE, json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, store.path / INDEX_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    store.set_manifest_index({"backend": name, "params": params, "rerank": rerank})
    return info


def index_info(store_path: Path) -> dict[str, Any]:
    """index/info.json, or {} when no index was built."""
    try:
        return dict(json.loads((store_path / INDEX_DIR / INFO_FILE).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        return {}


def load_index(store: Store, modality: str) -> Backend | None:
    """The built index of `modality` if it covers the store's current contents, else None."""
    info = index_info(store.path)
    if info.get("generation") != store.generation or not info.get("counts", {}).get(modality):
        return None
    backend = make_backend(info["backend"], store.manifest.dim, **info.get("params", {}))
    backend.load(store.path / INDEX_DIR / modality)
    return backend


def build_spec(store: Store, spec: IndexSpec) -> dict[str, Any]:
    return build_index(store, spec.backend, spec.params, spec.rerank, spec.memory_budget)


def parse_params(specs: list[str]) -> dict[str, Any]:
    """["m=32", "quantizer=int8"] -> {"m": 32, "quantizer": "int8"} (numbers become numbers)."""
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise StoreError(f"index parameter {spec!r}: write KEY=VALUE, e.g. m=32")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
