"""`polymodal index` / `search` end to end on a tiny saved model: incremental updates
(add, change, remove, rename, copy), unreadable files, captions, provenance, and SIGKILL
at several points of a run followed by a resume that loses and duplicates nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.records import ImageRef
from polymodal.errors import StoreError
from polymodal.eval.embed import embed_images
from polymodal.factory import get_transforms, load_model
from polymodal.index.api import index, info, remove_items
from polymodal.index.dedup import find_duplicates
from polymodal.index.evaluate import Config, evaluate_index
from polymodal.index.pipeline import IndexOptions
from polymodal.index.search import Searcher
from polymodal.index.store import VECTOR_DIR, Store
from tests.helpers import COLOURS, make_shapes_dataset, save_tiny_model

runner = CliRunner()
ENV = {"COLUMNS": "200"}
REPO = Path(__file__).resolve().parents[2]
OPTIONS = IndexOptions(batch_size=4, flush_every=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model2") / "model", seed=1)


def make_photos(root: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / ("sub" if i % 2 else "") / f"p{i}.png")
    return root


def expected_vectors(model_dir: Path, paths: list[str]) -> np.ndarray:
    model = load_model(model_dir)
    return embed_images(model, [ImageRef(p) for p in paths], get_transforms(model.config)).embeds


def live_uris(store_path: Path) -> list[str]:
    with Store(store_path) as store:
        return sorted(item.uri for item in store.live_items("image"))


def check_store(store_path: Path, model_dir: Path, files: list[Path]) -> None:
    """Exactly `files`, each once, each with its own image's vector; no stray chunks."""
    uris = sorted(str(f.resolve()) for f in files)
    assert live_uris(store_path) == uris
    with Store(store_path) as store:
        ids = [store.find(uri, "image").id for uri in uris]  # type: ignore[union-attr]
        np.testing.assert_allclose(store.vectors(ids), expected_vectors(model_dir, uris), atol=1e-5)
        used = {c for (c,) in store.db.execute("SELECT DISTINCT chunk FROM vectors")}
        assert {int(p.name[6:12]) for p in (store_path / VECTOR_DIR).iterdir()} <= used


def test_incremental_add_change_remove_rename_and_copy(tmp_path: Path, model_dir: Path) -> None:
    photos = make_photos(tmp_path / "photos")
    result = index(str(photos), model=str(model_dir), options=OPTIONS)
    store = tmp_path / "photos.pm"
    assert result.store == store and result.reports[0].embedded == 10
    check_store(store, model_dir, sorted(photos.rglob("*.png")))

    again = index(str(photos), options=OPTIONS).reports[0]  # the store's own model
    assert (again.embedded, again.reused, again.unchanged, again.removed) == (0, 0, 10, 0)

    os.rename(photos / "p0.png", photos / "renamed.png")
    shutil.copy(photos / "p2.png", photos / "sub" / "copy.png")
    (photos / "p4.png").unlink()
    Image.new("RGB", (30, 30), (255, 0, 0)).save(photos / "p6.png")  # changed content, same name
    Image.new("RGB", (30, 30), (0, 255, 0)).save(photos / "new.png")
    report = index(str(photos), options=OPTIONS).reports[0]
    assert (report.embedded, report.reused, report.removed) == (2, 2, 2)  # p6 + new; renamed + copy; p0 + p4
    check_store(store, model_dir, sorted(photos.rglob("*.png")))

    os.utime(photos / "p8.png", ns=(1, 1))  # touched: hashed again, same content, vector reused
    touched = index(str(photos), options=OPTIONS).reports[0]
    assert (touched.embedded, touched.reused) == (0, 1)
    with Store(store) as opened:
        assert opened.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] <= 12


def test_unreadable_files_are_reported_and_the_run_completes(tmp_path: Path, model_dir: Path) -> None:
    photos = make_photos(tmp_path / "photos", n=4)
    (photos / "empty.png").write_bytes(b"")
    (photos / "text.jpg").write_bytes(b"this is not an image")
    good = (photos / "p0.png").read_bytes()
    (photos / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (200, 200)).save(photos / "huge.png")
    options = IndexOptions(batch_size=3, max_pixels=100 * 100, num_workers=2)
    report = index(str(photos), model=str(model_dir), options=options).reports[0]
    reasons = dict(report.skipped)
    assert report.embedded == 4 and len(reasons) == 4
    assert "exceed the limit" in reasons[str((photos / "huge.png").resolve())]
    assert "truncated" in reasons[str((photos / "truncated.png").resolve())]
    again = index(str(photos), options=options).reports[0]  # unchanged bad files are not retried
    assert again.embedded == 0 and len(again.skipped) == 4
    assert info(tmp_path / "photos.pm")["skipped"] == 4


def test_captions_become_text_items_and_search_finds_both_ways(tmp_path: Path, model_dir: Path) -> None:
    captions = make_shapes_dataset(tmp_path / "shapes", per_class=2)
    index(str(captions.parent), model=str(model_dir), options=OPTIONS)
    store = tmp_path / "shapes.pm"
    assert info(store)["images"] == 24 and info(store)["texts"] == 48
    with Searcher(store) as searcher:
        model = load_model(model_dir)
        from polymodal.factory import get_tokenizer
        from polymodal.inference import embed_texts

        query = embed_texts(model, get_tokenizer(model_dir), ["a red circle"])[0].numpy()
        hits = searcher.search("a red circle", k=5)
        with Store(store) as opened:
            ids, vectors = opened.live_vectors("image")
        expected = ids[np.argsort(-(vectors @ query), kind="stable")[:5]]
        assert [h.id for h in hits] == expected.tolist()
        texts = searcher.search(hits[0].uri, k=3, modality="text")  # an image path as the query
        assert all(t.modality == "text" and t.metadata["image"] for t in texts)
        combined = searcher.query_vector("a red circle + 2:a blue square - green")
        assert combined.shape == (24,) and np.linalg.norm(combined) == pytest.approx(1.0, abs=1e-5)
    captions.write_text(captions.read_text().replace("a red circle", "a crimson circle"))
    report = index(str(captions.parent), options=OPTIONS).reports[0]
    assert report.captions_added == 2 and report.removed == 0  # two captions changed text
    with Store(store) as opened:
        texts = {i.text for i in opened.live_items("text")}
    assert "a crimson circle" in texts and "a red circle" not in texts


def test_another_model_is_refused_unless_reembedding(tmp_path: Path, model_dir: Path, other_model: Path) -> None:
    photos = make_photos(tmp_path / "photos", n=3)
    index(str(photos), model=str(model_dir), options=OPTIONS)
    store = tmp_path / "photos.pm"
    first_id = info(store)["model_id"]
    with pytest.raises(StoreError) as err:
        Searcher(store, model=str(other_model))
    assert first_id in str(err.value) and "--reembed" in str(err.value)
    with pytest.raises(StoreError, match=first_id):
        index(str(photos), model=str(other_model), options=OPTIONS)
    index(str(photos), model=str(other_model), reembed=True, options=OPTIONS)
    assert info(store)["model_id"] != first_id
    check_store(store, other_model, sorted(photos.rglob("*.png")))
    Searcher(store, model=str(other_model)).close()  # now the store's model


def test_remove_by_id_and_a_missing_model_are_clear(tmp_path: Path, model_dir: Path) -> None:
    photos = make_photos(tmp_path / "photos", n=3)
    with pytest.raises(StoreError, match="--model"):
        index(str(photos), options=OPTIONS)
    index(str(photos), model=str(model_dir), options=OPTIONS)
    store = tmp_path / "photos.pm"
    assert remove_items(store, [1, 99]) == 1
    assert info(store)["images"] == 2 and info(store)["index"]["counts"]["image"] == 2


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from polymodal.index import store as store_module, build as build_module
point, when = sys.argv[1], int(sys.argv[2])
calls = {{"n": 0}}

def killer(original, before):
    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if before and calls["n"] == when:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if not before and calls["n"] == when:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped

if point == "chunk-written":      # chunk renamed into place, transaction not yet run
    store_module.Store._write_chunk = killer(store_module.Store._write_chunk, before=False)
elif point == "in-transaction":   # inside BEGIN IMMEDIATE, before COMMIT
    store_module.Store._bump = killer(store_module.Store._bump, before=False)
elif point == "index-build":      # store committed, search index not yet replaced
    build_module.replace_dir = killer(build_module.replace_dir, before=True)
from polymodal.index.api import index
from polymodal.index.pipeline import IndexOptions
index(sys.argv[3], model=sys.argv[4], options=IndexOptions(batch_size=2, flush_every=2))
"""


@pytest.mark.parametrize(("point", "when"), [("chunk-written", 1), ("chunk-written", 3), ("in-transaction", 2),
                                             ("index-build", 1)])
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path: Path, model_dir: Path, point: str,
                                                          when: int) -> None:
    photos = make_photos(tmp_path / "photos", n=9)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO / "src")))
    proc = subprocess.run([sys.executable, str(script), point, str(when), str(photos), str(model_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    store = tmp_path / "photos.pm"
    with Store(store) as opened:  # it opens; whatever was committed is whole
        committed = opened.count("image")
    assert committed < 9 or point == "index-build"
    report = index(str(photos), options=OPTIONS).reports[0]
    assert report.embedded + report.unchanged + report.reused == 9
    check_store(store, model_dir, sorted(photos.rglob("*.png")))
    assert info(store)["index"]["fresh"] and info(store)["index"]["counts"]["image"] == 9


def test_cli_index_search_info_and_errors(tmp_path: Path, model_dir: Path) -> None:
    captions = make_shapes_dataset(tmp_path / "shapes", per_class=1)
    result = runner.invoke(app, ["index", str(captions.parent), "--model", str(model_dir), "--workers", "0"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "12 embedded" in result.output and "24 captions added" in result.output
    store = tmp_path / "shapes.pm"
    found = runner.invoke(app, ["search", str(store), "a red circle", "-k", "3", "--json"], env=ENV)
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output)
    assert len(hits) == 3 and all(h["modality"] == "image" for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    like = runner.invoke(app, ["search", str(store), "--like", str(hits[0]["id"]), "--json", "--where",
                               f"source={tmp_path / 'shapes'}", "-k", "2"], env=ENV)
    assert hits[0]["id"] not in [h["id"] for h in json.loads(like.output)]
    shown = runner.invoke(app, ["index", "info", str(store), "--json"], env=ENV)
    assert json.loads(shown.output)["texts"] == 24
    colour = next(iter(COLOURS))
    filtered = runner.invoke(app, ["search", str(store), "a shape", "--path", f"*{colour}*", "--json"], env=ENV)
    assert {h["uri"].split("/")[-1].split("-")[0] for h in json.loads(filtered.output)} == {colour}
    for args, message in ((["search", str(store)], "QUERY or --like"),
                          (["search", str(tmp_path), "dog"], "not a polymodal store"),
                          (["search", str(store), "dog", "--modality", "audio"], "unknown modality"),
                          (["index", "build", str(store), "--backend", "nope"], "unknown index backend")):
        proc = subprocess.run([sys.executable, "-m", "polymodal.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **ENV}, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_index_help_explains_the_default_command() -> None:
    result = runner.invoke(app, ["index", "--help"], env=ENV)
    assert result.exit_code == 0 and "SOURCE.pm" in result.output
    for command in ("update", "add", "remove", "info", "build"):
        assert command in result.output


def test_dedup_groups_copies_and_near_copies(tmp_path: Path, model_dir: Path) -> None:
    photos = make_photos(tmp_path / "photos", n=6)
    shutil.copy(photos / "p0.png", photos / "copy-of-p0.png")
    near = np.asarray(Image.open(photos / "p2.png")).copy()
    near[0, 0] = 255 - near[0, 0]  # one pixel changed: a near duplicate
    Image.fromarray(near).save(photos / "near-p2.png")
    index(str(photos), model=str(model_dir), options=OPTIONS)
    store = tmp_path / "photos.pm"
    groups = find_duplicates(store, threshold=0.999)
    named = [{Path(u).name for u in g.uris} for g in groups]
    assert {"p0.png", "copy-of-p0.png"} in named and {"p2.png", "near-p2.png"} in named
    assert all(len(g) == 2 for g in named)
    exact = next(g for g in groups if {Path(u).name for u in g.uris} == {"p0.png", "copy-of-p0.png"})
    assert exact.min_similarity == pytest.approx(1.0, abs=1e-5)
    with Store(store) as opened:
        ids, vectors = opened.live_vectors("image")
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    loose = float(np.sort(similarity.ravel())[-len(ids) * 2])  # a threshold that joins many more
    assert sum(len(g.ids) for g in find_duplicates(store, threshold=loose)) > 4
    result = runner.invoke(app, ["dedup", str(store), "--threshold", "0.999", "--json"], env=ENV)
    assert result.exit_code == 0 and len(json.loads(result.output)) == len(groups)


def test_eval_index_reports_every_backend_against_exact(tmp_path: Path, model_dir: Path) -> None:
    captions = make_shapes_dataset(tmp_path / "shapes", per_class=4)
    index(str(captions.parent), model=str(model_dir), options=OPTIONS)
    store = tmp_path / "shapes.pm"
    configs = [Config("exact fp32", "exact"), Config("exact binary", "exact", {"quantizer": "binary"}),
               Config("binary + rerank", "exact", {"quantizer": "binary"}, rerank=10),
               Config("hnsw", "hnsw", {"m": 8}), Config("ivfpq", "ivfpq", {"m": 8})]
    evaluation = evaluate_index(store, configs, max_queries=40)
    rows = {r["config"]: r for r in evaluation.tables["backends"]}
    reference = rows["exact fp32"]
    assert all(reference[f"{d} recall@10"] == 1.0 for d in ("t2i", "i2i", "i2t"))
    assert reference["bytes/vector"] == 24 * 4 and rows["exact binary"]["bytes/vector"] == 24 / 8
    assert rows["binary + rerank"]["recall@10"] >= rows["exact binary"]["recall@10"]
    assert isinstance(reference["pareto"], bool)  # which rows win depends on timings: see test_pareto_flags
    assert "needs at least" in rows["ivfpq"]["error"]  # 144 vectors cannot train 256 centroids
    # task numbers from exact search match a direct computation on the captions
    with Store(store) as opened:
        image_ids, images = opened.live_vectors("image")
        texts = list(opened.live_items("text"))
        text_vectors = opened.vectors([t.id for t in texts])
        uri_of = {i.id: i.uri for i in opened.live_items("image")}
    rng = np.random.default_rng(0)  # as evaluate_index samples: image queries first, then captions
    rng.choice(len(image_ids), 40, replace=False)
    picked = rng.choice(len(texts), 40, replace=False)
    best = image_ids[np.argsort(-(text_vectors[picked] @ images.T), axis=1, kind="stable")[:, :10]]
    hits = [texts[p].metadata["image"] in {uri_of[int(i)] for i in row} for p, row in zip(picked, best, strict=True)]
    assert reference["t2i task R@10"] == pytest.approx(100 * np.mean(hits), abs=0.01)
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", "index", str(store), "--out", str(out), "--queries", "20"], env=ENV)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "result.json").read_text())
    assert {r["config"] for r in saved["tables"]["backends"]} >= {"exact fp32", "hnsw fp32", "exact int8"}
    assert (out / "recall_qps.png").is_file() and "exact fp32" in (out / "report.md").read_text()


def test_backend_choice_persists_and_search_uses_it(tmp_path: Path, model_dir: Path) -> None:
    captions = make_shapes_dataset(tmp_path / "shapes", per_class=2)
    store = tmp_path / "shapes.pm"
    result = runner.invoke(app, ["index", str(captions.parent), "--model", str(model_dir), "--workers", "0",
                                 "--backend", "hnsw", "--param", "m=8", "--param", "quantizer=int8", "--rerank", "5"],
                           env=ENV)
    assert result.exit_code == 0, result.output
    built = info(store)["index"]
    assert (built["backend"], built["params"], built["rerank"]) == ("hnsw", {"m": 8, "quantizer": "int8"}, 5)
    photo = captions.parent / "images" / "red-circle-0.png"
    photo.unlink()
    index(str(captions.parent), options=OPTIONS)  # an update keeps the store's backend
    assert info(store)["index"]["backend"] == "hnsw" and info(store)["index"]["fresh"]
    with Searcher(store) as searcher:
        exact = Searcher(store)
        exact._indexes.clear()
        query = searcher.query_vector("a blue square")
        assert [h.id for h in searcher.search_vector(query, 5)] == [h.id for h in exact.search_vector(query, 5)]
    budget = runner.invoke(app, ["index", "build", str(store), "--memory-budget", "1GB"], env=ENV)
    assert budget.exit_code == 0 and "exact" in budget.output and info(store)["index"]["backend"] == "exact"
    both = subprocess.run([sys.executable, "-m", "polymodal.cli", "index", "build", str(store), "--memory-budget",
                           "1GB", "--backend", "hnsw"], capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "drop --backend" in both.stderr


def test_a_folder_with_a_captions_table_beside_its_images(tmp_path: Path, model_dir: Path) -> None:
    """captions.tsv naming files by name, images in a subfolder, one image without captions
    and one caption row without an image: all images indexed, captions attached by name."""
    root = make_photos(tmp_path / "set", n=3)
    (root / "images").mkdir()
    for name in ("p0.png", "p2.png"):
        os.rename(root / name, root / "images" / name)
    (root / "captions.tsv").write_text("image\tcaption\np0.png\ta first photo\np0.png\tanother caption\n"
                                       "gone.png\tno such image\n")
    report = index(str(root), model=str(model_dir), options=OPTIONS).reports[0]
    assert report.embedded == 3 and report.captions_added == 2
    assert report.dropped == {"gone.png": "captioned image not found in the folder"}
    with Store(tmp_path / "set.pm") as store:
        texts = {t.text: t.metadata["image"] for t in store.live_items("text")}
    assert texts == {"a first photo": str((root / "images" / "p0.png").resolve()),
                     "another caption": str((root / "images" / "p0.png").resolve())}


def test_every_run_is_a_job_whose_events_reach_the_caller_and_the_log(tmp_path: Path, model_dir: Path) -> None:
    from polymodal.index.jobs import ProgressEvent, job_status, list_jobs, read_events

    photos = make_photos(tmp_path / "photos", n=5)
    seen: list[ProgressEvent] = []
    result = index(str(photos), model=str(model_dir), options=OPTIONS, on_event=seen.append)
    store = tmp_path / "photos.pm"
    (job,) = list_jobs(store)
    assert seen == read_events(store, job.id)  # one stream: what the bar drew is what the log holds
    stages = [e.stage for e in seen]
    assert stages[0] == "start" and stages[-1] == "end" and {"hashing", "embedding", "index"} <= set(stages)
    embedding = [e for e in seen if e.stage == "embedding"]
    assert (embedding[-1].done, embedding[-1].total) == (5, 5)
    status = job_status(store, job.id)
    assert status.state == "done" and status.message == result.summary() and status.message.startswith("5 embedded")
    assert status.source == str(photos)

    # a re-embed swaps the whole store folder: the job log (still being written) moves with it
    index(str(photos), model=str(model_dir), reembed=True, options=OPTIONS)
    assert [j.state for j in list_jobs(store)] == ["done", "done"]


def test_a_failed_first_run_leaves_no_store_folder_behind(tmp_path: Path, model_dir: Path) -> None:
    photos = make_photos(tmp_path / "photos", n=2)
    with pytest.raises(Exception, match="model"):
        index(str(photos), model=str(tmp_path / "no-such-model"), options=OPTIONS)
    assert not (tmp_path / "photos.pm").exists()
    # a folder of the user's that happens to have a jobs/ folder is neither used nor touched
    project = tmp_path / "project"
    (project / "jobs").mkdir(parents=True)
    (project / "jobs" / "payroll.csv").write_text("precious")
    for model in (str(tmp_path / "no-such-model"), str(model_dir)):
        with pytest.raises(StoreError, match="not a store and not empty"):
            index(str(photos), store=project, model=model, options=OPTIONS)
    assert (project / "jobs" / "payroll.csv").read_text() == "precious"


def test_cli_lists_jobs_and_watches_one_from_its_log(tmp_path: Path, model_dir: Path) -> None:
    from polymodal.index.jobs import JobLog

    photos = make_photos(tmp_path / "photos", n=3)
    store = tmp_path / "photos.pm"
    assert runner.invoke(app, ["index", str(photos), "--model", str(model_dir)], env=ENV).exit_code == 0
    listed = runner.invoke(app, ["index", "jobs", str(store), "--json"], env=ENV)
    (job,) = json.loads(listed.stdout)
    assert job["state"] == "done" and job["message"].startswith("3 embedded")
    watched = runner.invoke(app, ["index", "watch", str(store)], env=ENV)
    assert watched.exit_code == 0 and f"job {job['id']}: done: 3 embedded" in watched.stdout
    with pytest.raises(RuntimeError), JobLog(store, "elsewhere") as failing:
        raise RuntimeError("disk full")
    watched = runner.invoke(app, ["index", "watch", str(store), failing.id], env=ENV)
    assert watched.exit_code == 1 and "failed: RuntimeError: disk full" in watched.stdout
    assert runner.invoke(app, ["index", "watch", str(store), "../../x"], env=ENV).exit_code != 0


def test_int8_precision_stores_vectors_close_to_fp32_and_unknown_precisions_are_refused(
        tmp_path: Path, model_dir: Path) -> None:
    photos = make_photos(tmp_path / "photos", n=6)
    result = runner.invoke(app, ["index", "update", str(photos), "--model", str(model_dir), "--precision", "int8",
                                 "--workers", "0", "--quiet"], env=ENV)
    assert result.exit_code == 0, result.output
    uris = live_uris(tmp_path / "photos.pm")
    with Store(tmp_path / "photos.pm") as store:
        got = store.vectors([store.find(uri, "image").id for uri in uris])  # type: ignore[union-attr]
    expected = expected_vectors(model_dir, uris)
    assert (got * expected).sum(axis=1).min() > 0.98  # unit vectors: the cosines
    assert not np.allclose(got, expected, atol=1e-5)  # quantised, not the fp32 model
    proc = subprocess.run([sys.executable, "-m", "polymodal.cli", "index", "update", str(photos), "--model",
                           str(model_dir), "--precision", "fp16", "--store", str(tmp_path / "other.pm")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "must be one of auto, fp32, bf16, int8, got 'fp16'" in proc.stderr
    assert not (tmp_path / "other.pm").exists()  # refused before anything was written
