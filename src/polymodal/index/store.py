"""The embedded store, a folder `NAME.pm/`:

    manifest.json     model id, dimension, metric, index parameters, format version
    store.sqlite      items (uri, content hash, size, mtime, modality, text, metadata,
                      added / deleted) and where each vector lives; WAL mode
    vectors/          chunk-NNNNNN.npy, float32 (n, dim), written once, never changed
    index/            the search index files (see backends.py)

Vectors are keyed by content (modality + SHA-256), so a renamed or copied file, or a
caption that appears twice, shares one vector and is never embedded again.

Crash safety: a chunk is written to a temporary name, flushed and renamed into place
*before* the SQLite transaction that refers to it commits. A kill at any point leaves
either a committed batch or an unreferenced chunk file, which the next writer deletes.
Only one process writes at a time (an exclusive lock on `.lock`); readers never block.

    store = Store.create("photos.pm", model_id="3f2a...", dim=512)
    store.add([NewItem("a.jpg", "image", sha)], vectors)      # one transaction
    ids, matrix = store.live_vectors(modality="image")
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.checkpoint import fsync
from polymodal.errors import StoreBusy, StoreError
from polymodal.index.jobs import JOBS_DIR
from polymodal.index.manifest import Manifest

DB_FILE = "store.sqlite"
VECTOR_DIR = "vectors"
INDEX_DIR = "index"
MODALITIES = ("image", "text")
COMPACT_CHUNK_ROWS = 65_536

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors(
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,          -- modality:sha256 of the content
    chunk INTEGER NOT NULL,
    row INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: index ids stay valid
    uri TEXT NOT NULL,
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    text TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector INTEGER NOT NULL REFERENCES vectors(id),
    added REAL NOT NULL,
    deleted REAL);
CREATE UNIQUE INDEX IF NOT EXISTS items_live_uri ON items(uri, modality) WHERE deleted IS NULL;
CREATE INDEX IF NOT EXISTS items_vector ON items(vector);
CREATE TABLE IF NOT EXISTS skipped(
    uri TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class NewItem:
    """An item to add. Its vector is found by content key, or taken from the vectors
    passed along with it."""

    uri: str
    modality: str
    sha256: str
    size: int = 0
    mtime_ns: int = 0
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.modality}:{self.sha256}"


@dataclass(frozen=True)
class Item:
    id: int
    uri: str
    modality: str
    sha256: str
    size: int
    mtime_ns: int
    text: str | None
    metadata: dict[str, Any]


_ITEM_COLUMNS = "id, uri, modality, sha256, size, mtime_ns, text, metadata"


def _item(row: tuple[Any, ...]) -> Item:
    return Item(row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]))


class Store:
    """A store folder opened for reading, or for writing (`writable=True`, one writer)."""

    def __init__(self, path: str | Path, *, writable: bool = False) -> None:
        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        if not (self.path / DB_FILE).is_file():
            raise StoreError(f"{self.path}: {DB_FILE} is missing; the store is incomplete")
        self.writable = writable
        self._lock_fd: int | None = None
        if writable:
            self._lock()
        self.db = _connect(self.path / DB_FILE, readonly=not writable)
        self._chunks: dict[int, np.ndarray] = {}
        if writable:
            self._remove_orphans()

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls, path: str | Path, *, model_id: str, dim: int, model_path: str = "") -> Store:
        """A new, empty store; an existing store at `path` is an error."""
        path = Path(path)
        if (path / "manifest.json").exists():
            raise StoreError(f"{path}: a store already exists here")
        if path.exists() and any(p.name != JOBS_DIR for p in path.iterdir()):  # a job log may come first
            raise StoreError(f"{path}: folder exists and is not empty; choose another store name")
        (path / VECTOR_DIR).mkdir(parents=True, exist_ok=True)
        (path / INDEX_DIR).mkdir(exist_ok=True)
        db = _connect(path / DB_FILE, readonly=False)
        db.close()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # the manifest is written last: a folder without one is not (yet) a store
        Manifest(model_id=model_id, dim=dim, model_path=model_path, created=created).write(path)
        return cls(path, writable=True)

    @classmethod
    def open_or_create(cls, path: str | Path, *, model_id: str, dim: int, model_path: str = "") -> Store:
        if (Path(path) / "manifest.json").exists():
            return cls(path, writable=True)
        return cls.create(path, model_id=model_id, dim=dim, model_path=model_path)

    def close(self) -> None:
        self.db.close()
        self._chunks.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> None:
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusy(f"{self.path}: another process is writing this store; wait for it to finish") from None
        self._lock_fd = fd

    def _remove_orphans(self) -> None:
        """Delete what a killed writer left: temporary files and chunks no row refers to."""
        used = {c for (c,) in self.db.execute("SELECT DISTINCT chunk FROM vectors")}
        for path in (self.path / VECTOR_DIR).iterdir():
            number = _chunk_number(path)
            if number is None or number not in used:
                path.unlink(missing_ok=True)
        for path in [*self.path.glob(".*.tmp-*"), *self.path.glob(".*.old-*")]:  # manifest, index builds
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only")

    # ----------------------------------------------------------------- reading

    @property
    def generation(self) -> int:
        """Counts committed changes; an index built at another generation is stale."""
        return int(self.meta("generation", "0"))

    def meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def roots(self) -> list[str]:
        """The folders and files items were indexed from (absolute paths)."""
        return list(json.loads(self.meta("roots", "[]")))

    def count(self, modality: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM items WHERE deleted IS NULL", []
        if modality:
            sql, args = sql + " AND modality = ?", [modality]
        return int(self.db.execute(sql, args).fetchone()[0])

    def find(self, uri: str, modality: str) -> Item | None:
        row = self.db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE uri = ? AND modality = ? "
                              "AND deleted IS NULL", (uri, modality)).fetchone()
        return _item(row) if row else None

    def items(self, ids: Iterable[int]) -> list[Item]:
        """Live or deleted items by id, in the order asked; unknown ids are an error."""
        wanted = [int(i) for i in ids]
        found: dict[int, Item] = {}
        for part in _parts(wanted):
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({marks})", part):
                found[row[0]] = _item(row)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise StoreError(f"{self.path}: no item with id {missing[0]}")
        return [found[i] for i in wanted]

    def live_items(self, modality: str | None = None, under: str | None = None) -> Iterator[Item]:
        """Live items, by id; `under` keeps those whose uri starts with that prefix."""
        sql = f"SELECT {_ITEM_COLUMNS} FROM items WHERE deleted IS NULL"
        args: list[Any] = []
        if modality:
            sql += " AND modality = ?"
            args.append(modality)
        if under:
            sql += " AND substr(uri, 1, ?) = ?"
            args += [len(under), under]
        for row in self.db.execute(sql + " ORDER BY id", args):
            yield _item(row)

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """Those content keys (modality:sha256) that already have a vector."""
        found: set[str] = set()
        for part in _parts(list(keys)):
            marks = ",".join("?" * len(part))
            found.update(k for (k,) in self.db.execute(f"SELECT key FROM vectors WHERE key IN ({marks})", part))
        return found

    def skipped(self) -> dict[str, tuple[int, int, str]]:
        """Unreadable files from earlier runs: uri -> (size, mtime_ns, reason)."""
        return {u: (s, m, r) for u, s, m, r in self.db.execute("SELECT uri, size, mtime_ns, reason FROM skipped")}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), dim) float32 vectors of the items `ids` (live or deleted), in order."""
        ids = [int(i) for i in ids]
        where: dict[int, tuple[int, int]] = {}
        for part in _parts(ids):
            marks = ",".join("?" * len(part))
            for item, chunk, row in self.db.execute(
                    f"SELECT items.id, chunk, row FROM items JOIN vectors ON vectors.id = items.vector "
                    f"WHERE items.id IN ({marks})", part):
                where[item] = (chunk, row)
        missing = [i for i in ids if i not in where]
        if missing:
            raise StoreError(f"{self.path}: no item with id {missing[0]}")
        out = np.empty((len(ids), self.manifest.dim), dtype=np.float32)
        chunks = np.array([where[i][0] for i in ids], dtype=np.int64)
        rows = np.array([where[i][1] for i in ids], dtype=np.int64)
        for chunk in np.unique(chunks):
            mask = chunks == chunk
            out[mask] = self._chunk(int(chunk))[rows[mask]]
        return out

    def live_vectors(self, modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32) of all live items, by id."""
        sql = ("SELECT items.id, chunk, row FROM items JOIN vectors ON vectors.id = items.vector "
               "WHERE deleted IS NULL")
        args: tuple[str, ...] = ()
        if modality:
            sql, args = sql + " AND modality = ?", (modality,)
        table = np.array(self.db.execute(sql + " ORDER BY items.id", args).fetchall(), dtype=np.int64)
        table = table.reshape(-1, 3)
        out = np.empty((len(table), self.manifest.dim), dtype=np.float32)
        for chunk in np.unique(table[:, 1]):
            mask = table[:, 1] == chunk
            out[mask] = self._chunk(int(chunk))[table[mask, 2]]
        return table[:, 0].copy(), out

    def _chunk(self, number: int) -> np.ndarray:
        if number not in self._chunks:
            path = self.path / VECTOR_DIR / _chunk_name(number)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise StoreError(f"{path}: unreadable vector chunk ({err}); rebuild the store") from None
            if array.ndim != 2 or array.shape[1] != self.manifest.dim or array.dtype != np.float32:
                raise StoreError(f"{path}: holds {array.dtype} {array.shape}, expected float32 (n, "
                                 f"{self.manifest.dim}); rebuild the store")
            self._chunks[number] = array
        return self._chunks[number]

    # ----------------------------------------------------------------- writing

    def add(self, items: Sequence[NewItem], vectors: np.ndarray | None = None) -> list[int]:
        """Add `items` in one transaction and return their ids. A live item with the same
        uri and modality is replaced. Items whose content key is already stored reuse that
        vector; the others take their row of `vectors` ((len(items), dim), same order)."""
        self._require_writable()
        if not items:
            return []
        for item in items:
            if item.modality not in MODALITIES:
                raise StoreError(f"unknown modality {item.modality!r}; one of {list(MODALITIES)}")
        known = self.known_keys(i.key for i in items)
        fresh: dict[str, int] = {}  # new key -> row of `vectors`
        for n, item in enumerate(items):
            if item.key not in known and item.key not in fresh:
                fresh[item.key] = n
        chunk = None
        if fresh:
            if vectors is None:
                raise StoreError(f"{len(fresh)} items have no stored vector and none was given, e.g. "
                                 f"{items[next(iter(fresh.values()))].uri}")
            vectors = self._check_vectors(vectors, len(items))
            chunk = self._write_chunk(vectors[list(fresh.values())])
        now = time.time()
        with self.db:  # one transaction: all of it lands, or none
            self.db.execute("BEGIN IMMEDIATE")
            for row, key in enumerate(fresh):
                self.db.execute("INSERT INTO vectors(key, chunk, row) VALUES (?, ?, ?)", (key, chunk, row))
            ids = []
            for item in items:
                self.db.execute("UPDATE items SET deleted = ? WHERE uri = ? AND modality = ? AND deleted IS NULL",
                                (now, item.uri, item.modality))
                cursor = self.db.execute(
                    "INSERT INTO items(uri, modality, sha256, size, mtime_ns, text, metadata, vector, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT id FROM vectors WHERE key = ?), ?)",
                    (item.uri, item.modality, item.sha256, item.size, item.mtime_ns, item.text,
                     json.dumps(item.metadata, sort_keys=True), item.key, now))
                ids.append(int(cursor.lastrowid or 0))
                self.db.execute("DELETE FROM skipped WHERE uri = ?", (item.uri,))
            self._bump()
        return ids

    def remove(self, ids: Iterable[int]) -> int:
        """Mark items deleted (their vectors stay until `compact`); returns how many were live."""
        self._require_writable()
        ids = [int(i) for i in ids]
        removed = 0
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for part in _parts(ids):
                marks = ",".join("?" * len(part))
                removed += self.db.execute(f"UPDATE items SET deleted = ? WHERE id IN ({marks}) AND deleted IS NULL",
                                           [time.time(), *part]).rowcount
            if removed:
                self._bump()
        return removed

    def record_skipped(self, entries: Sequence[tuple[str, int, int, str]]) -> None:
        """Remember unreadable files (uri, size, mtime_ns, reason): not retried until they change."""
        self._require_writable()
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO skipped(uri, size, mtime_ns, reason) VALUES (?, ?, ?, ?)",
                                entries)

    def forget_skipped(self, uris: Iterable[str]) -> None:
        self._require_writable()
        with self.db:
            self.db.executemany("DELETE FROM skipped WHERE uri = ?", [(u,) for u in uris])

    def add_root(self, root: str) -> None:
        self._require_writable()
        roots = self.roots
        if root not in roots:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('roots', ?)",
                                (json.dumps([*roots, root]),))

    def set_manifest_index(self, index: dict[str, Any]) -> None:
        self._require_writable()
        self.manifest.index = index
        self.manifest.write(self.path)

    def garbage_fraction(self) -> float:
        """The share of stored vectors no live item uses (deleted or replaced content)."""
        total = self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        if not total:
            return 0.0
        used = self.db.execute("SELECT COUNT(DISTINCT vector) FROM items WHERE deleted IS NULL").fetchone()[0]
        return 1.0 - used / total

    def compact(self) -> int:
        """Rewrite the vectors live items use into fresh chunks and drop deleted items and
        unused vectors; returns how many vectors were dropped. Crash-safe like `add`: the
        new chunks land before the transaction that switches to them, the old ones are
        deleted after it."""
        self._require_writable()
        used = np.array(self.db.execute(
            "SELECT DISTINCT vectors.id, chunk, row FROM vectors JOIN items ON items.vector = vectors.id "
            "WHERE items.deleted IS NULL ORDER BY chunk, row").fetchall(), dtype=np.int64).reshape(-1, 3)
        old_chunks = {c for (c,) in self.db.execute("SELECT DISTINCT chunk FROM vectors")}
        moves: list[tuple[int, int, int]] = []  # (new chunk, new row, vector id)
        for start in range(0, len(used), COMPACT_CHUNK_ROWS):
            part = used[start:start + COMPACT_CHUNK_ROWS]
            data = np.empty((len(part), self.manifest.dim), dtype=np.float32)
            for chunk in np.unique(part[:, 1]):
                mask = part[:, 1] == chunk
                data[mask] = self._chunk(int(chunk))[part[mask, 2]]
            number = self._write_chunk(data)
            moves += [(number, row, int(vid)) for row, vid in enumerate(part[:, 0])]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE vectors SET chunk = ?, row = ? WHERE id = ?", moves)
            self.db.execute("DELETE FROM items WHERE deleted IS NOT NULL")
            dropped = self.db.execute("DELETE FROM vectors WHERE id NOT IN (SELECT vector FROM items)").rowcount
            self._bump()
        self._chunks.clear()
        for number in old_chunks:
            (self.path / VECTOR_DIR / _chunk_name(number)).unlink(missing_ok=True)
        return int(dropped)

    def _check_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.shape != (n, self.manifest.dim):
            raise StoreError(f"vectors have shape {vectors.shape}; expected ({n}, {self.manifest.dim})")
        if not np.isfinite(vectors).all():
            raise StoreError("vectors contain NaN or infinite values; nothing was added")
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _write_chunk(self, data: np.ndarray) -> int:
        """Write a new chunk file durably and return its number (not yet referenced)."""
        folder = self.path / VECTOR_DIR
        on_disk = [n for p in folder.iterdir() if (n := _chunk_number(p)) is not None]
        in_db = self.db.execute("SELECT MAX(chunk) FROM vectors").fetchone()[0]
        number = max([0, in_db or 0, *on_disk]) + 1
        target = folder / _chunk_name(number)
        tmp = folder / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                np.save(f, data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync(folder)
        return number

    def _bump(self) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in writers)
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if not readonly:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("SELECT COUNT(*) FROM items").fetchone()
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path}: not a readable store database ({err})") from None
    return db


def _chunk_name(number: int) -> str:
    return f"chunk-{number:06d}.npy"


def _chunk_number(path: Path) -> int | None:
    name = path.name
    if name.startswith("chunk-") and name.endswith(".npy") and name[6:-4].isdigit():
        return int(name[6:-4])
    return None


def _parts(values: list[Any], size: int = 900) -> Iterator[list[Any]]:
    """SQLite limits bound parameters per statement; ask in parts."""
    for start in range(0, len(values), size):
        yield values[start:start + size]
