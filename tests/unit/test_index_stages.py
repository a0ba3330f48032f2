"""The indexing stages one at a time: the reader's plan, the encoder's batches, the
writer's commits."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.factory import get_tokenizer, get_transforms, load_model
from polymodal.index import pipeline, reader
from polymodal.index.pipeline import Encoder, IndexOptions, decode_workers, encode_batches, index_source
from polymodal.index.reader import list_source, plan_run, sha256_of
from polymodal.index.store import VECTOR_DIR, NewItem, Store
from tests.helpers import save_tiny_model


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    path = save_tiny_model(tmp_path_factory.mktemp("model") / "model")
    model = load_model(path)
    return Encoder(model, get_tokenizer(path), get_transforms(model.config))


def photos(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_reader_plan_sorts_files_into_unchanged_reuse_embed_and_remove(tmp_path: Path) -> None:
    files = photos(tmp_path / "src", 4)
    store = Store.create(tmp_path / "s.pm", model_id="m", dim=3)
    listing = list_source(str(tmp_path / "src"))
    found = {Path(f.uri).name: f for f in listing.images}
    items = [NewItem(f.uri, "image", sha256_of(f.ref), f.size, f.mtime_ns, metadata={"source": listing.source})
             for f in found.values()]
    store.add(items, np.eye(4, 3, dtype=np.float32) + 0.1)
    os.utime(files[0], ns=(5, 5))  # touched
    shutil.copy(files[1], tmp_path / "src" / "copy.png")  # copied
    (tmp_path / "src" / "2.png").unlink()  # removed
    Image.new("RGB", (9, 9)).save(tmp_path / "src" / "new.png")  # new content
    plan = plan_run(store, list_source(str(tmp_path / "src")))
    assert plan.unchanged == 2  # 1.png and 3.png
    assert sorted(Path(f.uri).name for f, _ in plan.reuse) == ["0.png", "copy.png"]
    assert [Path(f.uri).name for f, _ in plan.embed] == ["new.png"]
    assert store.items(plan.remove)[0].uri.endswith("2.png") and len(plan.remove) == 1


def test_encoder_batches_match_the_model_and_name_unreadable_positions(tmp_path: Path, encoder: Encoder) -> None:
    files = photos(tmp_path, 5)
    files[2].write_bytes(b"broken")
    listing = list_source(str(tmp_path))
    batches = list(encode_batches(encoder, listing.images, IndexOptions(batch_size=2)))
    assert [len(positions) + len(bad) for positions, _, bad in batches] == [2, 2, 1]
    positions = [p for ps, _, _ in batches for p in ps]
    vectors = np.concatenate([v for _, v, _ in batches])
    bad = [b for _, _, bs in batches for b in bs]
    assert positions == [0, 1, 3, 4] and bad[0][0] == 2 and "2.png" in bad[0][1]
    with torch.no_grad():
        expected = encoder.model.encode_image(encoder.transform.batch([files[i] for i in positions]))
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-5)


def test_writer_commits_every_flush(tmp_path: Path, encoder: Encoder) -> None:
    photos(tmp_path / "src", 7)
    store = Store.create(tmp_path / "s.pm", model_id="m", dim=encoder.model.config.embed_dim)
    generations = []
    original = store.add

    def counting_add(items: list, vectors: np.ndarray | None = None) -> list[int]:
        ids = original(items, vectors)
        generations.append(len(items))
        return ids

    store.add = counting_add  # type: ignore[method-assign]
    report = index_source(store, encoder, str(tmp_path / "src"), IndexOptions(batch_size=2, flush_every=3))
    assert report.embedded == 7 and generations == [4, 3]  # flushed after 4 (>= 3), then the rest
    assert len(list((store.path / VECTOR_DIR).iterdir())) == 2


def test_links_within_the_folder_are_one_item_and_any_alias_names_its_captions(tmp_path: Path) -> None:
    real, other = photos(tmp_path / "src" / "images", 2)
    (real.parent / "zz-link.png").symlink_to(real)  # listed after the file it points to
    # keyed by bare file names, found anywhere below the table (captions.tsv beside images/)
    (tmp_path / "src" / "captions.tsv").write_text(f"image\tcaption\nzz-link.png\ta linked photo\n"
                                                   f"{other.name}\tanother photo\n")
    listing = list_source(str(tmp_path / "src"))
    assert sorted(f.uri for f in listing.images) == sorted(str(p.resolve()) for p in (real, other))
    captions = {Path(f.uri).name: f.captions for f in listing.images}
    assert captions == {real.name: ("a linked photo",), other.name: ("another photo",)} and not listing.dropped


def test_transparent_images_are_indexed_on_the_models_background(tmp_path: Path) -> None:
    # the batch path (decoding workers) must composite as the query path does
    from polymodal.config import PreprocessConfig
    from polymodal.data.records import ImageRef
    from polymodal.eval.embed import ImageDataset
    from polymodal.transforms import ImageTransform

    Image.new("RGBA", (8, 8), (200, 10, 10, 0)).save(tmp_path / "clear.png")
    transform = ImageTransform(PreprocessConfig(image_size=4, background=(0, 0, 0)))
    _, crop, reason = ImageDataset([ImageRef(str(tmp_path / "clear.png"))], transform)[0]
    assert reason == "" and crop is not None and int(crop.max()) == 0
    assert torch.equal(transform.normalise(crop), transform(tmp_path / "clear.png"))


@pytest.mark.parametrize(("cores", "device", "expected"), [(2, "cpu", 0), (1, "cpu", 0), (3, "cpu", 2), (16, "cpu", 2),
                                                           (2, "cuda", 2)])
def test_decoding_workers_default_to_none_where_the_model_needs_every_core(
        monkeypatch: pytest.MonkeyPatch, cores: int, device: str, expected: int) -> None:
    monkeypatch.setattr(pipeline, "usable_cores", lambda: cores)
    assert decode_workers(None, torch.device(device)) == expected
    assert decode_workers(1, torch.device(device)) == 1  # an explicit count is kept


def test_usable_cores_follows_the_affinity() -> None:
    affinity = getattr(os, "sched_getaffinity", None)
    assert pipeline.usable_cores() == (len(affinity(0)) if affinity else os.cpu_count())


@pytest.mark.parametrize("parallel_from", [0, 1 << 40])  # threads for every size; one thread for these
def test_hashes_come_back_in_listing_order_with_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         parallel_from: int) -> None:
    monkeypatch.setattr(reader, "PARALLEL_HASH_BYTES", parallel_from)
    monkeypatch.setattr(reader, "HASH_CHUNK", 3)  # several chunks, the last one short
    root = tmp_path / "src"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(11):
        (root / f"{i:02d}.jpg").write_bytes(rng.bytes(int(rng.integers(1, 5000))))
    found = list_source(str(root)).images
    calls: list[tuple[str, int, int]] = []
    shas = reader._hash_all(found, 4, lambda stage, done, total: calls.append((stage, done, total)))
    assert shas == [sha256_of(f.ref) for f in found]
    assert len(set(shas)) == 11
    assert calls[-1] == ("hashing", 11, 11)
    assert reader._hash_all([], 4, None) == []
