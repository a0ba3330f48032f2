"""Reader stage of indexing: what a source holds, and what changed since the last run.

A source is a folder of images (with an optional captions.jsonl/.csv/.tsv beside them),
a captions table, tar shards, or a .toml source table (see data/resolve.py). Its items
carry `{"source": SOURCE}` in their metadata, so a later run of the same source knows
which stored items it owns: those it no longer finds are removed.

Change detection is cheap first: a file whose size and mtime match its stored item is
unchanged. Anything else is hashed (SHA-256 of the bytes); content whose hash is already
stored (a renamed, copied or touched file) reuses that vector instead of being embedded.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from polymodal.data.records import ImageRef
from polymodal.data.resolve import TABLE_SUFFIXES, captions_source, resolve_source
from polymodal.data.sources import captions_by_image, image_files, load_source
from polymodal.errors import DataError
from polymodal.index.store import NewItem, Store

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Found:
    """One image of a source, as the reader saw it."""

    uri: str
    ref: ImageRef
    size: int
    mtime_ns: int
    captions: tuple[str, ...] = ()


@dataclass
class SourceListing:
    source: str  # the normalised source spec items are tagged with
    images: list[Found]
    dropped: dict[str, str] = field(default_factory=dict)  # rows the source itself could not use


def list_source(spec: str) -> SourceListing:
    """Every image (and its captions) that `spec` names."""
    path = Path(spec)
    if path.is_dir():
        return _list_folder(path.resolve())
    pairs = load_source(resolve_source(spec))
    source = str(path.resolve()) if path.exists() else spec
    images = [_found(_absolute(r.image), r.captions) for r in pairs.records]
    return SourceListing(source, images, dict(pairs.dropped))


def _list_folder(root: Path) -> SourceListing:
    """Every image under `root`; a captions table in it (captions.jsonl/.csv/.tsv) gives
    images their captions. Its image column may name files relative to the folder or,
    when that finds nothing, by file name anywhere below it (captions.tsv beside images/)."""
    files: dict[str, list[Path]] = {}  # resolved path (the item's uri) -> the paths listed for it
    escaping = {}
    for path in image_files(root):
        # The listing does not enter linked directories and root is resolved, so only a
        # link itself can lead elsewhere: resolving every path took most of the listing.
        real = path.resolve() if path.is_symlink() else path
        # a symlink to a file outside the folder is not indexed: serving would refuse it anyway
        if real.is_relative_to(root):
            files.setdefault(str(real), []).append(path)  # links within the folder: one item
        else:
            escaping[str(path)] = "a symbolic link out of the indexed folder; not indexed"
    table = next((p for p in sorted(root.iterdir()) if _is_captions_table(p)), None)
    if table is None:
        return SourceListing(str(root), [_found(ImageRef(uri)) for uri in files], escaping)
    captions = captions_by_image(captions_source(table))
    names: dict[str, list[str]] = {}  # file name -> the uris listed under it (any alias's name)
    for uri, paths in files.items():
        for name in dict.fromkeys(p.name for p in paths):
            names.setdefault(name, []).append(uri)
    matched: dict[str, tuple[str, ...]] = {}
    dropped: dict[str, str] = dict(escaping)
    for key, texts in captions.items():
        target = str((root / key).resolve())
        if target not in files:
            candidates = names.get(Path(key).name, [])
            target = candidates[0] if len(candidates) == 1 else ""
        if not target:
            dropped[key] = "captioned image not found in the folder"
        else:
            matched[target] = tuple(dict.fromkeys(texts))
    images = [_found(ImageRef(uri), matched.get(uri, ())) for uri in files]
    return SourceListing(str(root), images, dropped)


def _is_captions_table(path: Path) -> bool:
    # the name first: a stat of every entry of a large folder costs more than the listing
    return path.stem == "captions" and path.suffix.lower() in TABLE_SUFFIXES and path.is_file()


def _absolute(ref: ImageRef) -> ImageRef:
    return ImageRef(str(Path(ref.path).resolve()), ref.member, ref.offset, ref.size)


def _found(ref: ImageRef, captions: tuple[str, ...] = ()) -> Found:
    try:
        stat = os.stat(ref.path)
    except OSError as err:
        raise DataError(f"{ref.path}: cannot read ({err.strerror})") from None
    size = ref.size if ref.member else stat.st_size
    return Found(ref.name, ref, size, stat.st_mtime_ns, captions)


def image_metadata(found: Found, source: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"source": source}
    if found.ref.member:  # what it takes to read the image again (serving, re-embedding)
        meta["tar"] = {"path": found.ref.path, "member": found.ref.member, "offset": found.ref.offset,
                       "size": found.ref.size}
    return meta


class Located(Protocol):
    @property
    def uri(self) -> str: ...

    @property
    def metadata(self) -> dict[str, Any]: ...


def image_ref(item: Located) -> ImageRef:
    """Where a stored image item's (or search hit's) bytes are."""
    tar = item.metadata.get("tar")
    if tar:
        return ImageRef(tar["path"], tar["member"], tar["offset"], tar["size"])
    return ImageRef(item.uri)


def sha256_of(ref: ImageRef) -> str:
    if ref.member:
        return hashlib.sha256(ref.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    with open(ref.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Plan:
    """What one indexing run has to do."""

    source: str
    unchanged: int = 0
    reuse: list[tuple[Found, str]] = field(default_factory=list)  # content already stored: no embedding
    embed: list[tuple[Found, str]] = field(default_factory=list)  # new content
    still_unreadable: list[tuple[str, str]] = field(default_factory=list)  # skipped before, unchanged
    remove: list[int] = field(default_factory=list)  # ids of items the source no longer holds
    captions: list[NewItem] = field(default_factory=list)  # new or changed caption items
    dropped: dict[str, str] = field(default_factory=dict)
    listing: list[Found] = field(default_factory=list)


def plan_run(store: Store, listing: SourceListing, hash_threads: int = 4,
             progress: Progress | None = None) -> Plan:
    """Compare a source with the store: what is unchanged, reusable, new, or gone."""
    plan = Plan(listing.source, dropped=listing.dropped, listing=listing.images)
    owned = {item.uri: item for item in store.live_items("image") if item.metadata.get("source") == listing.source}
    skipped = store.skipped()
    to_hash: list[Found] = []
    for found in listing.images:
        item = owned.get(found.uri)
        if item is not None and (item.size, item.mtime_ns) == (found.size, found.mtime_ns):
            plan.unchanged += 1
        elif found.uri in skipped and skipped[found.uri][:2] == (found.size, found.mtime_ns):
            plan.still_unreadable.append((found.uri, skipped[found.uri][2]))
        else:
            to_hash.append(found)
    hashes = _hash_all(to_hash, hash_threads, progress)
    known = store.known_keys(f"image:{sha}" for sha in hashes)
    for found, sha in zip(to_hash, hashes, strict=True):
        (plan.reuse if f"image:{sha}" in known else plan.embed).append((found, sha))
    seen = {f.uri for f in listing.images}
    plan.remove = [item.id for uri, item in owned.items() if uri not in seen]
    _plan_captions(store, plan, listing)
    return plan


HASH_CHUNK = 64  # files per pool task at most: a task per small file cost more than hashing it
PARALLEL_HASH_BYTES = 64 << 10  # mean file size from which threads pay


def _hash_all(found: list[Found], threads: int, progress: Progress | None) -> list[str]:
    # hashlib and file reads release the GIL, so threads overlap large files' reading and
    # hashing; for small ones (4,096 JPEGs of 5 KB) Python's own work dominates and threads
    # only contend for the GIL: one thread took 66 ms, four 137 ms (1 MB files: 218 -> 126).
    if not found:
        return []
    if sum(f.size for f in found) < PARALLEL_HASH_BYTES * len(found):
        threads = 1
    size = max(1, min(HASH_CHUNK, math.ceil(len(found) / (4 * max(1, threads)))))  # a few tasks per thread
    chunks = [found[i:i + size] for i in range(0, len(found), size)]
    out: list[str] = []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for shas in pool.map(lambda chunk: [sha256_of(f.ref) for f in chunk], chunks):
            out += shas
            if progress is not None and (len(out) % 256 == 0 or len(out) == len(found)):
                progress("hashing", len(out), len(found))
    return out


def caption_uri(image_uri: str, number: int) -> str:
    return f"{image_uri}#caption-{number}"


def _plan_captions(store: Store, plan: Plan, listing: SourceListing) -> None:
    """Captions are text items `IMAGE#caption-N`, owned by the same source. Changed or new
    ones are (re)added; those the source no longer has are removed. A caption whose image
    turns out unreadable is dropped later, with its image."""
    owned = {item.uri: item for item in store.live_items("text") if item.metadata.get("source") == listing.source}
    wanted: set[str] = set()
    for found in listing.images:
        for number, text in enumerate(found.captions):
            uri = caption_uri(found.uri, number)
            wanted.add(uri)
            sha = text_sha256(text)
            item = owned.get(uri)
            if item is None or item.sha256 != sha:
                plan.captions.append(NewItem(uri, "text", sha, text=text,
                                             metadata={"source": listing.source, "image": found.uri}))
    plan.remove += [item.id for uri, item in owned.items() if uri not in wanted]
