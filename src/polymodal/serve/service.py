"""`SearchService`: everything the HTTP API does, with no HTTP types in it, so it can be
tested and reused without a server.

Security lives here, not in the routes: only live, indexed items are ever read; a file
is served only when its real path (symlinks resolved) is inside one of the folders the
store was indexed from; uploads are limited in bytes and pixels and must decode as an
image.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from polymodal.classify import class_probabilities
from polymodal.errors import DataError, ImageDecodeError, PolymodalError, StoreBusy, StoreError
from polymodal.eval.zeroshot import class_embeddings
from polymodal.index.api import remove_items
from polymodal.index.build import index_info
from polymodal.index.jobs import ProgressEvent, job_status, list_jobs, new_job_id, poll
from polymodal.index.reader import image_ref
from polymodal.index.rerank import ITMReranker
from polymodal.index.search import Filter, Hit, Searcher, rerankable
from polymodal.index.store import DB_FILE, Item
from polymodal.serve.schemas import (
    ClassifyOut,
    ExplainOut,
    HealthOut,
    HitOut,
    ItemOut,
    JobOut,
    LabelScore,
    Modality,
    SearchOut,
)
from polymodal.transforms import load_image

log = logging.getLogger("polymodal.serve")
NO_FILTER = Filter()
UPLOADS = "uploads"  # images added over the API live in STORE/uploads/
UPLOAD_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tiff"}
THUMBNAIL_SIDE = 256
THUMBNAIL_CACHE = 512  # thumbnails kept in memory


class NotFound(PolymodalError):
    """An item that does not exist, was removed, or may not be served."""


class TooLarge(PolymodalError):
    """An upload over the byte or pixel limit."""


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    max_k: int = 200
    max_labels: int = 100


class SearchService:
    def __init__(self, store_path: str | Path, model: str | None = None, device: str = "",
                 limits: Limits = Limits(), reranker: str | Path | None = None, rerank_top: int = 20) -> None:
        self.searcher = Searcher(store_path, model=model, device=device)
        # a fusion model (task = "fusion"): re-ranks text searches and explains hits
        self.reranker = ITMReranker(reranker, device or "cpu") if reranker else None
        self.rerank_top = rerank_top
        self._device = device
        self.limits = limits
        self.roots = [os.path.realpath(r) for r in self.searcher.store.roots if Path(r).exists()]
        # one SQLite connection and one model: requests take turns (FastAPI runs sync routes in threads)
        self._lock = threading.Lock()
        self._thumbnails: OrderedDict[int, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()  # thumbnails are made outside the main lock, in parallel
        self._generation = index_info(self.searcher.store.path).get("generation")
        self._inode = _inode(self.searcher.store.path)
        self._job_lock = threading.Lock()
        self._job: threading.Thread | None = None

    def close(self) -> None:
        self.searcher.close()

    def warm(self) -> None:
        """Load the model and the image index now, so the first query does not wait for them."""
        with self._lock:
            self.searcher.model  # noqa: B018 - loading is the point
            self.searcher.search_vector(np.ones(self.searcher.store.manifest.dim, np.float32)
                                        / np.sqrt(self.searcher.store.manifest.dim), 1)

    # ----------------------------------------------------------------- search

    def search_text(self, query: str, k: int = 10, modality: str = "image", where: Filter = NO_FILTER,
                    rerank: bool = False) -> SearchOut:
        if not query.strip():
            raise DataError("the query is empty")
        # arithmetic, image paths and caption searches are not re-rankable: they run as plain searches
        # (the response's `reranked` says which happened)
        if rerank and rerankable(query, modality):
            reranker, top = self._require_reranker(), max(self.rerank_top, self._k(k))
            found = self._timed(query, k, modality,
                                lambda: self.searcher.search(query, k, modality, where, reranker, top))
            return found.model_copy(update={"reranked": True})
        return self._timed(query, k, modality, lambda: self.searcher.search(query, self._k(k), modality, where))

    def explain(self, item_id: int, text: str) -> ExplainOut:
        """Where the fusion model looks in image `item_id` for each word of `text`."""
        from polymodal.explain import explain

        reranker = self._require_reranker()
        if not text.strip():
            raise DataError("give a text to explain")
        data = self._read(self._live(item_id, "image"))
        start = time.perf_counter()
        with self._lock:
            found = explain(reranker.model, reranker.tokenizer, reranker.transform, data, text)
            match = float(reranker.match(text, [data])[0])
        return ExplainOut(item=item_id, text=text, words=found.words, grid=int(found.maps.shape[1]),
                          maps=[[round(float(v), 5) for v in m.ravel()] for m in found.maps], match=round(match, 6),
                          took_ms=round(1000 * (time.perf_counter() - start), 2))

    def _require_reranker(self) -> ITMReranker:
        if self.reranker is None:
            raise NotFound("this server has no fusion model: start it with --reranker MODEL")
        return self.reranker

    def search_image(self, data: bytes, k: int = 10, modality: str = "image", where: Filter = NO_FILTER) -> SearchOut:
        image = self.decode_upload(data)
        return self._timed("(uploaded image)", k, modality,
                           lambda: self.searcher.search_vector(self.searcher.embed_image(image), self._k(k),
                                                               modality, where))

    def similar(self, item_id: int, k: int = 10, modality: str = "image", where: Filter = NO_FILTER) -> SearchOut:
        self.item(item_id)  # 404 for unknown or removed items
        return self._timed(f"like {item_id}", k, modality,
                           lambda: self.searcher.more_like([item_id], self._k(k), modality, where))

    def _timed(self, query: str, k: int, modality: str, run: Callable[[], list[Hit]]) -> SearchOut:
        start = time.perf_counter()
        with self._lock:
            self._follow_store()
            out = [self._hit(h) for h in run()]
        took = round(1000 * (time.perf_counter() - start), 2)
        return SearchOut(query=query, modality=cast(Modality, modality), k=k, took_ms=took, hits=out)

    def _k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise DataError(f"k must be between 1 and {self.limits.max_k}, got {k}")
        return k

    def _hit(self, hit: Hit) -> HitOut:
        image_id = None
        if hit.modality == "text" and hit.metadata.get("image"):
            found = self.searcher.store.find(hit.metadata["image"], "image")
            image_id = found.id if found else None
        return HitOut(id=hit.id, score=round(hit.score, 6), modality=cast(Modality, hit.modality),
                      name=hit.text or "" if hit.modality == "text" else _name(hit.uri), text=hit.text,
                      image_id=image_id, thumbnail=_thumbnail_url(hit.id if hit.modality == "image" else image_id),
                      metadata=_public_metadata(hit.metadata),
                      match=None if hit.match is None else round(hit.match, 6))

    # ----------------------------------------------------------------- items

    def item(self, item_id: int) -> ItemOut:
        found = self._live(item_id)
        return ItemOut(id=found.id, modality=cast(Modality, found.modality),
                       name=_name(found.uri) if found.modality == "image" else found.text or "",
                       text=found.text, size=found.size,
                       metadata=_public_metadata(found.metadata),
                       thumbnail=_thumbnail_url(found.id) if found.modality == "image" else None,
                       original=f"/api/items/{found.id}/original" if found.modality == "image" else None)

    def original(self, item_id: int) -> tuple[bytes, str]:
        """The indexed file's bytes and media type."""
        found = self._live(item_id, "image")
        data = self._read(found)
        with Image.open(io.BytesIO(data)) as image:
            kind = (image.format or "").lower()
        return data, {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
                      "bmp": "image/bmp", "tiff": "image/tiff"}.get(kind, "application/octet-stream")

    def thumbnail(self, item_id: int) -> bytes:
        """A JPEG at most THUMBNAIL_SIDE on its long side (cached)."""
        with self._cache_lock:
            if item_id in self._thumbnails:
                self._thumbnails.move_to_end(item_id)
                return self._thumbnails[item_id]
        found = self._live(item_id, "image")
        try:
            image = load_image(self._read(found), self.limits.max_pixels, name=_name(found.uri))
        except ImageDecodeError as err:
            raise NotFound(f"item {item_id} can no longer be read ({err})") from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        data = buffer.getvalue()
        with self._cache_lock:
            self._thumbnails[item_id] = data
            if len(self._thumbnails) > THUMBNAIL_CACHE:
                self._thumbnails.popitem(last=False)
        return data

    def _live(self, item_id: int, modality: str | None = None) -> Item:
        with self._lock:
            try:
                (found,) = self.searcher.store.items([item_id])
            except PolymodalError:
                found = None
            live = found is not None and self.searcher.store.find(found.uri, found.modality)
        if found is None or not live or live.id != item_id or (modality and found.modality != modality):
            raise NotFound(f"no {modality or 'item'} with id {item_id}")
        return found

    def _read(self, found: Item) -> bytes:
        """The item's bytes, if its real path lies inside an indexed folder."""
        ref = image_ref(found)
        real = os.path.realpath(ref.path)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            raise NotFound(f"item {found.id} is outside the indexed folders")
        try:
            return ref.read_bytes()
        except OSError:
            raise NotFound(f"item {found.id}: its file is gone") from None

    # ----------------------------------------------------------------- uploads

    def decode_upload(self, data: bytes) -> Image.Image:
        if len(data) > self.limits.max_upload_bytes:
            raise TooLarge(f"the upload has {len(data)} bytes; the limit is {self.limits.max_upload_bytes}")
        if not data:
            raise DataError("the upload is empty")
        try:
            return load_image(data, self.limits.max_pixels, name="upload")
        except ImageDecodeError as err:
            if "exceed the limit" in str(err) or "too many pixels" in str(err):
                raise TooLarge(str(err)) from None
            raise

    # ----------------------------------------------------------------- writes

    def add_image(self, data: bytes) -> ItemOut:
        """Store an uploaded image under STORE/uploads/ and index it (with the store's model)."""
        image = self.decode_upload(data)
        with Image.open(io.BytesIO(data)) as header:  # load_image converted it; the file's format is here
            suffix = UPLOAD_SUFFIXES.get(header.format or "", "")
        if not suffix:  # what Pillow decoded but we would not serve back as-is: store it as PNG
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            data, suffix = buffer.getvalue(), ".png"
        uploads = self.searcher.store.path / UPLOADS
        uploads.mkdir(exist_ok=True)
        target = uploads / f"{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
        with self._lock:
            new_file = not target.exists()
            if new_file:
                tmp = uploads / f".{target.name}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, target)
            try:
                self._reindex(str(uploads))
            except StoreBusy:  # another writer has the store: leave no unindexed upload behind
                if new_file:
                    target.unlink(missing_ok=True)
                raise
            found = self.searcher.store.find(str(target.resolve()), "image")
        if found is None:
            raise DataError("the upload could not be indexed")
        return self.item(found.id)

    def remove(self, item_id: int) -> int:
        """Remove an item from the store (and its file, if it was uploaded here)."""
        found = self._live(item_id)
        with self._lock:
            removed = remove_items(self.searcher.store.path, [item_id])
            uploads = os.path.realpath(self.searcher.store.path / UPLOADS)
            if os.path.realpath(found.uri).startswith(uploads + os.sep):
                Path(found.uri).unlink(missing_ok=True)
            self._refresh()
        return removed

    def _reindex(self, source: str) -> None:
        from polymodal.index.build import build_index
        from polymodal.index.pipeline import Encoder, index_source
        from polymodal.index.store import Store

        loaded = self.searcher.model
        with Store(self.searcher.store.path, writable=True) as store:
            index_source(store, Encoder(loaded.model, loaded.tokenizer, loaded.transform), source)
            build_index(store)
        self._refresh()

    def _follow_store(self) -> None:
        """Another process (`polymodal index`) may have changed the store: serve its new state
        once it has rebuilt the index (not at every commit of a running job, which would
        make each search rebuild an exact index), and reopen a store that a re-embed
        swapped for a new folder."""
        path = self.searcher.store.path
        if _inode(path) not in (-1, self._inode):  # -1: mid-swap, keep serving the old one a moment
            self.searcher.close()
            self.searcher = Searcher(path, device=self._device)  # the new store's own model
            self._refresh()
        elif index_info(path).get("generation") != self._generation:
            self._refresh()

    def _refresh(self) -> None:
        """Forget cached indexes and thumbnails after the store changed."""
        self._generation = index_info(self.searcher.store.path).get("generation")
        self._inode = _inode(self.searcher.store.path)
        self.searcher.reload()
        with self._cache_lock:
            self._thumbnails.clear()
        self.roots = [os.path.realpath(r) for r in self.searcher.store.roots if Path(r).exists()]

    # ----------------------------------------------------------------- index jobs

    def jobs(self, limit: int = 20) -> list[JobOut]:
        return [JobOut(**status.to_dict()) for status in list_jobs(self.searcher.store.path, limit)]

    def job(self, job_id: str) -> JobOut:
        try:
            return JobOut(**job_status(self.searcher.store.path, job_id).to_dict())
        except StoreError:
            raise NotFound(f"no job {job_id!r}") from None

    def job_events_since(self, job_id: str, after: int = -1) -> tuple[list[ProgressEvent], bool]:
        """The job's events after `after`, and whether it has ended (see jobs.poll)."""
        return poll(self.searcher.store.path, job_id, after)

    def start_index_job(self) -> JobOut:
        """Bring the store up to date with its folders in a background thread; searches go on
        meanwhile and see the new items when the job has committed them."""
        with self._job_lock:
            running = [j.id for j in self.jobs() if j.state == "running"]
            if running:
                raise StoreBusy(f"index job {running[0]} is still running")
            if self._job is not None and self._job.is_alive():
                raise StoreBusy("an index job of this server is still running")
            job_id = new_job_id()
            self._job = threading.Thread(target=self._run_index_job, args=(job_id,), name=f"index-{job_id}",
                                         daemon=True)
            self._job.start()
        for _ in range(200):  # its start event is written within moments
            try:
                return self.job(job_id)
            except NotFound:
                time.sleep(0.01)
        raise RuntimeError(f"index job {job_id} did not start")  # a server fault: answered as a 500

    def _run_index_job(self, job_id: str) -> None:
        from polymodal.index.api import update_from_roots

        try:
            # the server's own model: no second copy in memory (forward passes may run concurrently)
            update_from_roots(self.searcher.store.path, loaded=self.searcher.model, job_id=job_id)
            with self._lock:
                self._refresh()
        except Exception as err:  # written to the job log as a failed event; the server stays up
            log.warning("index job %s failed: %s", job_id, type(err).__name__)

    def classify(self, data: bytes, labels: list[str], template: str = "a photo of a {}.") -> ClassifyOut:
        labels = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
        if not 2 <= len(labels) <= self.limits.max_labels:
            raise DataError(f"give between 2 and {self.limits.max_labels} distinct labels, got {len(labels)}")
        if "{}" not in template:
            raise DataError("the template needs a {} where the label goes")
        image = self.decode_upload(data)
        start = time.perf_counter()
        with self._lock:
            loaded = self.searcher.model
            classes = class_embeddings(loaded.model, loaded.tokenizer, [[label] for label in labels], [template])
            scores = (self.searcher.embed_image(image)[None] @ classes.T)
            probabilities = class_probabilities(loaded.model, scores)[0]
        order = np.argsort(-scores[0], kind="stable")
        out = [LabelScore(label=labels[i], score=round(float(scores[0, i]), 6),
                          probability=round(float(probabilities[i]), 6)) for i in order]
        return ClassifyOut(labels=out, best=out[0].label, took_ms=round(1000 * (time.perf_counter() - start), 2))

    def health(self) -> HealthOut:
        with self._lock:
            store = self.searcher.store
            built = index_info(store.path)
            return HealthOut(store=store.path.name, model_id=store.manifest.model_id, images=store.count("image"),
                             texts=store.count("text"), index=str(built.get("backend", "exact")),
                             reranker=self.reranker.model_id if self.reranker else None)


def _inode(store_path: Path) -> int:
    """Tells a store's database apart from the one a re-embed swapped in."""
    try:
        return os.stat(store_path / DB_FILE).st_ino
    except OSError:
        return -1


def _name(uri: str) -> str:
    return uri.rsplit(":", 1)[-1].rsplit("/", 1)[-1] if "/" in uri or ":" in uri else uri


def _thumbnail_url(item_id: int | None) -> str | None:
    return None if item_id is None else f"/api/items/{item_id}/thumbnail"


def _public_metadata(metadata: dict[str, object]) -> dict[str, object]:
    """Metadata without where files live on the server (paths, tar offsets)."""
    return {k: v for k, v in metadata.items() if k not in ("source", "tar", "image")}
