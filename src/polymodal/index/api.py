"""The Python API of indexing: what `polymodal index`, `index add|remove|info` call.

    report = index("photos/", model="runs/emoji/model")   # creates photos.pm/, or updates it
    remove_items("photos.pm", [3, 4])
    info("photos.pm")
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymodal.checkpoint import replace_dir
from polymodal.errors import StoreError
from polymodal.eval.runner import EvalOptions, LoadedModel, load_for_eval
from polymodal.index.build import IndexSpec, build_index, build_spec, index_info
from polymodal.index.jobs import JOB_ID, JOBS_DIR, JobLog, Subscriber, job_file, new_job_id
from polymodal.index.manifest import Manifest
from polymodal.index.pipeline import DEFAULT_OPTIONS, Encoder, IndexOptions, IndexReport, index_source
from polymodal.index.reader import Progress
from polymodal.index.store import Store

# Compact when this share of stored vectors belongs to no live item.
COMPACT_AT = 0.3


def default_store_path(source: str) -> Path:
    """photos/ -> photos.pm, captions.tsv -> captions.pm (beside the source)."""
    path = Path(source.rstrip("/"))
    return path.with_name(path.stem + ".pm") if path.suffix else path.with_name(path.name + ".pm")


def load_encoder(model: str, device: str = "", precision: str = "auto") -> LoadedModel:
    return load_for_eval(model, EvalOptions(device=device, precision=precision))


def store_model(store_path: Path, model: str | None, device: str = "", precision: str = "auto") -> LoadedModel:
    """The model that made the store's vectors: `model` when given (it must be the same
    one), else the one the manifest points to."""
    from polymodal.index.manifest import Manifest

    manifest = Manifest.read(store_path)
    spec = model or manifest.model_path
    if not model and not Path(spec).is_dir():
        raise StoreError(f"{store_path} was built with model {manifest.model_id} from {spec or '(unknown)'}, "
                         "which is not there any more; pass --model with that model")
    loaded = load_encoder(spec, device, precision)
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

    def summary(self) -> str:
        """One line: what the run did (the done event of its job)."""
        def total(name: str) -> int:
            return sum(getattr(r, name) for r in self.reports)

        return (f"{total('embedded')} embedded, {total('reused')} reused, {total('unchanged')} unchanged, "
                f"{total('removed')} removed, {total('captions_added')} captions added, "
                f"{sum(len(r.skipped) for r in self.reports)} unreadable")


def index(source: str, store: str | Path | None = None, model: str | None = None, *, reembed: bool = False,
          options: IndexOptions = DEFAULT_OPTIONS, device: str = "", spec: IndexSpec | None = None,
          on_event: Subscriber | None = None, job_id: str | None = None) -> IndexResult:
    """Create or update the store of `source` and rebuild its search index.

    A new store needs `model`; an existing one uses its own model. A different `model`
    for an existing store is refused unless `reembed`, which rebuilds the store's vectors
    from all its sources with the new model (atomically: the old store stays until the
    new one is complete). The run is a job: its progress events go to
    STORE/jobs/JOB_ID.jsonl and to `on_event` (see jobs.py)."""
    spec = spec or IndexSpec()
    path = Path(store) if store else default_store_path(source)
    exists = (path / "manifest.json").exists()
    if not exists and not model:
        raise StoreError(f"{path} does not exist yet: name the model to embed with (--model MODEL_DIR, "
                         "or --model quickstart)")
    if not exists and path.exists() and not _only_job_logs(path):
        raise StoreError(f"{path} is not a store and not empty: choose another store path")
    job_id = job_id or new_job_id()
    try:
        return _index_job(source, path, model, exists, reembed, options, device, spec, on_event, job_id)
    except BaseException:
        if not exists and not (path / "manifest.json").exists():  # leave no half-made store behind
            job_file(path, job_id).unlink(missing_ok=True)
            for folder in (path / JOBS_DIR, path):  # only if nothing else is in them
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def _only_job_logs(path: Path) -> bool:
    """An empty folder, or one holding nothing but job logs (of a first run that was killed)."""
    if not path.is_dir():
        return False
    for entry in path.iterdir():
        if entry.name != JOBS_DIR or not entry.is_dir():
            return False
        if any(not (log.suffix == ".jsonl" and JOB_ID.fullmatch(log.stem)) for log in entry.iterdir()):
            return False
    return True


def _index_job(source: str, path: Path, model: str | None, exists: bool, reembed: bool, options: IndexOptions,
               device: str, spec: IndexSpec, on_event: Subscriber | None, job_id: str) -> IndexResult:
    with JobLog(path, source, [on_event] if on_event else [], job_id) as job:
        if exists and reembed and model:
            result = reembed_store(path, model, extra_source=source, options=options, device=device, job=job)
        else:
            loaded = store_model(path, model, device, options.precision) if exists \
                else load_encoder(str(model), device, options.precision)
            with Store.open_or_create(path, model_id=loaded.model_id, dim=loaded.model.config.embed_dim,
                                      model_path=str(loaded.path.resolve())) as opened:
                result = _update(opened, loaded, [source], options, spec, job)
        job.summary = result.summary()
    return result


def update_from_roots(store_path: str | Path, *, options: IndexOptions = DEFAULT_OPTIONS, device: str = "",
                      loaded: LoadedModel | None = None, on_event: Subscriber | None = None,
                      job_id: str | None = None) -> IndexResult:
    """Bring an existing store up to date with every folder and file it was indexed from
    (what a server's index job runs). `loaded`: the store's model, already in memory."""
    path = Path(store_path)
    with Store(path) as current:
        roots = current.roots
    with JobLog(path, ", ".join(roots), [on_event] if on_event else [], job_id) as job:
        if loaded is None:
            loaded = store_model(path, None, device, options.precision)
        else:
            check_provenance(path, Manifest.read(path).model_id, loaded)
        with Store(path, writable=True) as opened:
            result = _update(opened, loaded, roots, options, IndexSpec(), job)
        job.summary = result.summary()
    return result


def _update(store: Store, loaded: LoadedModel, sources: list[str], options: IndexOptions, spec: IndexSpec,
            progress: Progress | None) -> IndexResult:
    encoder = Encoder(loaded.model, loaded.tokenizer, loaded.transform)
    reports = [index_source(store, encoder, s, options, progress) for s in sources]
    compacted = store.compact() if store.garbage_fraction() > COMPACT_AT else 0
    built = index_info(store.path)
    if spec or built.get("generation") != store.generation:
        if progress is not None:
            progress("index", 0, 1)
        built = build_spec(store, spec)
        if progress is not None:
            progress("index", 1, 1)
    return IndexResult(store.path, reports, built, compacted)


def reembed_store(path: Path, model: str, extra_source: str | None = None, options: IndexOptions = DEFAULT_OPTIONS,
                  device: str = "", job: Progress | None = None) -> IndexResult:
    """Rebuild the store at `path` from its recorded sources with `model`."""
    with Store(path) as old:
        sources = old.roots
        config = old.manifest.index
        spec = IndexSpec(config.get("backend"), config.get("params"), config.get("rerank"))
    if extra_source and extra_source not in sources and str(Path(extra_source).resolve()) not in sources:
        sources.append(extra_source)
    loaded = load_encoder(model, device, options.precision)
    tmp = path.parent / f".{path.name}.reembed-{uuid.uuid4().hex[:8]}"
    try:
        with Store.create(tmp, model_id=loaded.model_id, dim=loaded.model.config.embed_dim,
                          model_path=str(loaded.path.resolve())) as new:
            result = _update(new, loaded, sources, options, spec, job)
        with Store(path, writable=True):  # hold the writer lock while swapping
            _keep_jobs(path, tmp)
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.store = path
    return result


def _keep_jobs(old: Path, new: Path) -> None:
    """The job logs (this run's included, still being written) move with the store."""
    if (old / JOBS_DIR).is_dir():
        shutil.copytree(old / JOBS_DIR, new / JOBS_DIR, dirs_exist_ok=True)


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
