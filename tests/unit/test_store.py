"""The store: items and content-keyed vectors in SQLite + chunk files, crash leftovers,
locking, compaction, and refusal of what it cannot read."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from polymodal.errors import StoreError
from polymodal.index.store import VECTOR_DIR, NewItem, Store


def unit_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def image(uri: str, sha: str, **kw: object) -> NewItem:
    return NewItem(uri, "image", sha, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.create(tmp_path / "s.pm", model_id="m1", dim=8)


def test_added_items_keep_their_vectors_and_metadata(store: Store) -> None:
    vectors = unit_vectors(3)
    ids = store.add([image("a", "h1", size=5, metadata={"k": "v"}), image("b", "h2"), image("c", "h3")], vectors)
    assert len(set(ids)) == 3
    np.testing.assert_array_equal(store.vectors(ids[::-1]), vectors[::-1])
    got_ids, got = store.live_vectors("image")
    assert got_ids.tolist() == ids
    np.testing.assert_array_equal(got, vectors)
    assert store.find("a", "image").metadata == {"k": "v"}  # type: ignore[union-attr]
    assert store.count() == 3 and store.count("text") == 0


def test_known_content_reuses_its_vector_and_needs_none(store: Store) -> None:
    vectors = unit_vectors(1)
    store.add([image("a", "h1")], vectors)
    (copy_id,) = store.add([image("copy-of-a", "h1")])  # no vectors given: content is known
    np.testing.assert_array_equal(store.vectors([copy_id]), vectors)
    assert store.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 1
    with pytest.raises(StoreError, match="no stored vector"):
        store.add([image("new", "h9")])


def test_same_uri_replaces_the_live_item(store: Store) -> None:
    old = store.add([image("a", "h1")], unit_vectors(1, seed=1))
    new = store.add([image("a", "h2")], unit_vectors(1, seed=2))
    assert store.count() == 1 and store.find("a", "image").id == new[0]  # type: ignore[union-attr]
    assert store.items(old)[0].id == old[0]  # the old row is kept (deleted) until compaction
    generation = store.generation
    assert store.remove(new + new) == 1 and store.count() == 0
    assert store.generation == generation + 1


def test_compact_drops_unused_vectors_and_keeps_live_ones(store: Store) -> None:
    vectors = unit_vectors(6)
    ids = store.add([image(f"u{i}", f"h{i}") for i in range(6)], vectors)
    store.remove(ids[:4])
    assert store.garbage_fraction() == pytest.approx(4 / 6)
    assert store.compact() == 4
    np.testing.assert_array_equal(store.vectors(ids[4:]), vectors[4:])
    assert len(list((store.path / VECTOR_DIR).iterdir())) == 1
    assert store.garbage_fraction() == 0.0


def test_orphan_chunks_and_temporary_files_are_removed_on_open(store: Store) -> None:
    store.add([image("a", "h1")], unit_vectors(1))
    orphan = store._write_chunk(unit_vectors(2))  # as if killed before the commit
    tmp = store.path / VECTOR_DIR / ".chunk-000009.npy.tmp-abcd"
    tmp.write_bytes(b"half")
    store.close()
    reopened = Store(store.path, writable=True)
    names = sorted(p.name for p in (store.path / VECTOR_DIR).iterdir())
    assert names == ["chunk-000001.npy"] and orphan == 2
    assert reopened.count() == 1


def test_one_writer_at_a_time_and_readers_cannot_write(store: Store) -> None:
    with pytest.raises(StoreError, match="another process is writing"):
        Store(store.path, writable=True)
    reader = Store(store.path)
    with pytest.raises(StoreError, match="read-only"):
        reader.add([image("a", "h1")], unit_vectors(1))
    store.close()
    Store(store.path, writable=True).close()  # the lock went with the writer


def test_bad_vectors_are_refused_and_nothing_is_added(store: Store) -> None:
    with pytest.raises(StoreError, match="shape"):
        store.add([image("a", "h1")], unit_vectors(1, dim=5))
    bad = unit_vectors(1)
    bad[0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.add([image("a", "h1")], bad)
    with pytest.raises(StoreError, match="modality"):
        store.add([NewItem("a", "audio", "h1")], unit_vectors(1))
    assert store.count() == 0


def test_unreadable_stores_are_refused_with_the_reason(tmp_path: Path, store: Store) -> None:
    with pytest.raises(StoreError, match="not a polymodal store"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="already exists"):
        Store.create(store.path, model_id="m", dim=8)
    manifest = json.loads((store.path / "manifest.json").read_text())
    (store.path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(StoreError, match="newer"):
        Store(store.path)
    (store.path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest"):
        Store(store.path)
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    store.close()
    (store.path / "store.sqlite").write_bytes(b"garbage" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(store.path / "store.sqlite") + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="not a readable store database"):
        Store(store.path)


def test_a_corrupt_chunk_is_named(store: Store) -> None:
    ids = store.add([image("a", "h1")], unit_vectors(1))
    store.close()
    (store.path / VECTOR_DIR / "chunk-000001.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(StoreError, match="chunk-000001.npy"):
        Store(store.path).vectors(ids)


def test_the_database_is_in_wal_mode(store: Store) -> None:
    db = sqlite3.connect(store.path / "store.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
