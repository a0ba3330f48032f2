"""The Python API of indexing: what `polymodal index`, `index add|remove|info` call.

    report = index("photos/", model="runs/emoji/model")   # creates photos.pm/, or updates it
    remove_items("photos.pm", [3, 4])
    info("photos.pm")
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymodal.checkpoint import replace_dir
from polymodal.errors import StoreError
from polymodal.eval.runner import EvalOptions, LoadedModel, load_for_eval
from polymodal.index.build import IndexSpec, build_index, build_spec, index_info
from polymodal.index.pipeline import DEFAULT_OPTIONS, Encoder, IndexOptions, IndexReport, index_source
from polymodal.index.reader import Progress
from polymodal.index.store import Store

# Compact when this share of stored vectors belongs to no live item.
COMPACT_AT = 0.3


def default_store_path(source: str) -> Path:
    """photos/ -> photos.pm, captions.tsv -> captions.pm (beside the source)."""
    path = Path(source.rstrip("/"))
    return path.with_name(path.stem + ".pm") if path.suffix else path.with_name(path.name + ".pm")


def load_encoder(model: str, device: str = "") -> LoadedModel:
    return load_for_eval(model, EvalOptions(device=device))


def store_model(store_path: Path, model: str | None, device: str = "") -> LoadedModel:
    """The model that made the store's vectors: `model` when given (it must be the same
    one), else the one the manifest points to."""
    from polymodal.index.manifest import Manifest

    manifest = Manifest.read(store_path)
    spec = model or manifest.model_path
    if not model and not Path(spec).is_dir():
        raise StoreError(f"{store_path} was built with model {manifest.model_id} from {spec or '(unknown)'}, "
                         "which is not there any more; pass --model with that model")
    loaded = load_encoder(spec, device)
    check_provenance(store_path, manifest.model_id, loaded)
    return loaded


def check_provenance(store_path: Path, store_model_id: str, loaded: LoadedModel) -> None:
    if loaded.model_id != store_model_id:
        raise StoreError(
            f"{store_path} holds vectors of model {store_model_id}, but model {loaded.model_id} ({loaded.path}) "
            "was given: their embeddings are not comparable. Use the store's model, or pass --reembed to "
            "re-embed the whole store with the new one")


@dataclass
class IndexResult:
    store: Path
    reports: list[IndexReport]
    index: dict[str, Any]
    compacted: int = 0


def index(source: str, store: str | Path | None = None, model: str | None = None, *, reembed: bool = False,
          options: IndexOptions = DEFAULT_OPTIONS, device: str = "", spec: IndexSpec | None = None,
          progress: Progress | None = None) -> IndexResult:
    """Create or update the store of `source` and rebuild its search index.

    A new store needs `model`; an existing one uses its own model. A different `model`
    for an existing store is refused unless `reembed`, which rebuilds the store's vectors
    from all its sources with the new model (atomically: the old store stays until the
    new one is complete)."""
    spec = spec or IndexSpec()
    path = Path(store) if store else default_store_path(source)
    exists = (path / "manifest.json").exists()
    if exists and reembed and model:
        return reembed_store(path, model, extra_source=source, options=options, device=device, progress=progress)
    if not exists and not model:
        raise StoreError(f"{path} does not exist yet: name the model to embed with (--model MODEL_DIR, "
                         "or --model quickstart)")
    loaded = store_model(path, model, device) if exists else load_encoder(str(model), device)
    with Store.open_or_create(path, model_id=loaded.model_id, dim=loaded.model.config.embed_dim,
                              model_path=str(loaded.path.resolve())) as opened:
        return _update(opened, loaded, [source], options, spec, progress)


def _update(store: Store, loaded: LoadedModel, sources: list[str], options: IndexOptions, spec: IndexSpec,
            progress: Progress | None) -> IndexResult:
    encoder = Encoder(loaded.model, loaded.tokenizer, loaded.transform)
    reports = [index_source(store, encoder, s, options, progress) for s in sources]
    compacted = store.compact() if store.garbage_fraction() > COMPACT_AT else 0
    built = index_info(store.path)
    if spec or built.get("generation") != store.generation:
        built = build_spec(store, spec)
    return IndexResult(store.path, reports, built, compacted)


def reembed_store(path: Path, model: str, extra_source: str | None = None, options: IndexOptions = DEFAULT_OPTIONS,
                  device: str = "", progress: Progress | None = None) -> IndexResult:
    """Rebuild the store at `path` from its recorded sources with `model`."""
    with Store(path) as old:
        sources = old.roots
        config = old.manifest.index
        spec = IndexSpec(config.get("backend"), config.get("params"), config.get("rerank"))
    if extra_source and extra_source not in sources and str(Path(extra_source).resolve()) not in sources:
        sources.append(extra_source)
    loaded = load_encoder(model, device)
    tmp = path.parent / f".{path.name}.reembed-{uuid.uuid4().hex[:8]}"
    try:
        with Store.create(tmp, model_id=loaded.model_id, dim=loaded.model.config.embed_dim,
                          model_path=str(loaded.path.resolve())) as new:
            result = _update(new, loaded, sources, options, spec, progress)
        with Store(path, writable=True):  # hold the writer lock while swapping
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.store = path
    return result


def remove_items(store_path: str | Path, ids: list[int]) -> int:
    """Remove items by id and rebuild the index; returns how many were live."""
    with Store(store_path, writable=True) as store:
        removed = store.remove(ids)
        if removed:
            build_index(store)
    return removed


def info(store_path: str | Path) -> dict[str, Any]:
    """What `polymodal index info` prints."""
    with Store(store_path) as store:
        built = index_info(store.path)
        return {
            "store": str(store.path),
            "model_id": store.manifest.model_id,
            "model_path": store.manifest.model_path,
            "dim": store.manifest.dim,
            "metric": store.manifest.metric,
            "format_version": store.manifest.format_version,
            "images": store.count("image"),
            "texts": store.count("text"),
            "skipped": len(store.skipped()),
            "sources": store.roots,
            "index": {**built, "fresh": built.get("generation") == store.generation},
            "garbage_fraction": round(store.garbage_fraction(), 4),
        }
