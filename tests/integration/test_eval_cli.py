"""`polymodal eval ...` and `polymodal classify` end to end on a tiny saved model."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from polymodal.checkpoint import read_card
from polymodal.cli import app
from polymodal.data.resolve import resolve_source
from polymodal.data.sources import CaptionsSource, ClassSource, EmojiSource, TarSource, load_source
from polymodal.errors import DataError
from polymodal.eval.report import format_value
from polymodal.eval.retrieval import evaluate_retrieval
from polymodal.factory import get_tokenizer, get_transforms, load_model
from tests.helpers import COLOURS, make_shapes_dataset, save_tiny_model

runner = CliRunner()
ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<colour>/<i>.png: 6 solid-colour images per class."""
    root = tmp_path_factory.mktemp("classes")
    for colour, rgb in COLOURS.items():
        (root / colour).mkdir()
        for i in range(6):
            Image.new("RGB", (24, 24), tuple(min(255, v + 5 * i) for v in rgb)).save(root / colour / f"{i}.png")
    return root


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def test_eval_retrieval_matches_the_library_and_writes_the_report(model_dir: Path, tmp_path: Path) -> None:
    captions = make_shapes_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", "retrieval", str(model_dir), str(tmp_path / "data"), "--out", str(out)],
                           env=ENV)
    assert result.exit_code == 0, result.output
    saved = _result(out)
    model = load_model(model_dir, device="cpu")
    direct = evaluate_retrieval(model, get_tokenizer(model_dir), get_transforms(model.config),
                                load_source(CaptionsSource(file=str(captions), caption_columns=("captions",))))
    for name in ("t2i_r1", "i2t_r5", "t2i_map", "i2t_true_r10", "mean_recall"):
        assert saved["metrics"][name] == pytest.approx(direct.metrics[name])
    assert saved["info"]["model_id"] == read_card(model_dir).model_id
    assert saved["info"]["images"] == 24 and saved["info"]["texts"] == 48
    report = (out / "report.md").read_text()
    assert f"| {format_value(saved['metrics']['t2i_r10'])} |" in report
    assert (out / "recall_curve.png").is_file() and (out / "similarity_histogram.png").is_file()
    assert "mean_recall" in result.output and str(out / "report.md") in " ".join(result.output.split())


def test_eval_retrieval_in_int8_equals_evaluating_the_quantised_model(model_dir: Path, tmp_path: Path) -> None:
    from polymodal.inference import quantise_int8

    captions = make_shapes_dataset(tmp_path / "data", per_class=2)
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", "retrieval", str(model_dir), str(tmp_path / "data"), "--out", str(out),
                                 "--precision", "int8", "--no-plots"], env=ENV)
    assert result.exit_code == 0, result.output
    saved = _result(out)
    model = quantise_int8(load_model(model_dir, device="cpu"))
    direct = evaluate_retrieval(model, get_tokenizer(model_dir), get_transforms(model.config),
                                load_source(CaptionsSource(file=str(captions), caption_columns=("captions",))))
    assert saved["info"]["precision"] == "int8"
    assert saved["info"]["model_id"] == read_card(model_dir).model_id  # the fp32 model's id
    for name in ("t2i_r1", "i2t_r5", "t2i_map", "mean_recall"):
        assert saved["metrics"][name] == pytest.approx(direct.metrics[name])


def test_eval_zeroshot_and_linear_probe_on_class_folders(model_dir: Path, classes_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "zs"
    result = runner.invoke(app, ["eval", "zeroshot", str(model_dir), str(classes_dir), "--out", str(out),
                                 "--template", "a {} square", "--template", "ensemble", "--no-plots"], env=ENV)
    assert result.exit_code == 0, result.output
    saved = _result(out)
    assert saved["info"]["classes"] == 4 and saved["info"]["images"] == 24
    assert saved["info"]["templates"][0] == "a {} square" and len(saved["info"]["templates"]) == 9
    assert 0 <= saved["metrics"]["top1"] <= 100 and not list(out.glob("*.png"))
    probe = tmp_path / "probe"
    result = runner.invoke(app, ["eval", "linear-probe", str(model_dir), str(classes_dir), "--shots", "1,2",
                                 "--repeats", "2", "--out", str(probe)], env=ENV)
    assert result.exit_code == 0, result.output
    metrics = _result(probe)["metrics"]
    assert {"top1", "top1_1shot", "top1_2shot", "top1_2shot_std"} <= set(metrics)
    assert (probe / "few_shot.png").is_file()


def test_eval_weat_with_a_users_test_file(model_dir: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests.json"
    tests.write_text(json.dumps({"shapes": {
        "targets": [{"name": "round", "words": ["circle", "ring", "disc"]},
                    {"name": "angular", "words": ["square", "triangle", "box"]}],
        "attributes": ["pleasant", {"name": "bad", "words": ["awful", "nasty", "poison"]}]}}))
    out = tmp_path / "weat"
    result = runner.invoke(app, ["eval", "weat", str(model_dir), str(tests), "--sentences", "--partitions", "1000",
                                 "--out", str(out)],
                           env=ENV)
    assert result.exit_code == 0, result.output
    saved = _result(out)
    assert -2 <= saved["metrics"]["shapes_effect_size"] <= 2 and 0 <= saved["metrics"]["shapes_p_value"] <= 1
    assert saved["metrics"]["mean_abs_effect_size"] == pytest.approx(abs(saved["metrics"]["shapes_effect_size"]))
    row = saved["tables"]["Association tests (d > 0: X is closer to A than Y is)"][0]
    # 3 words x 8 sentences per set: C(48, 24) splits are too many to enumerate, so 1000 are sampled
    assert row["kind"] == "SEAT" and row["partitions"] == "1000 sampled" and row["X"] == "round (24)"
    listing = runner.invoke(app, ["eval", "weat", "--list"], env=ENV)
    assert "weat1-flowers-insects" in listing.output and "ieat-emoji-skin-tone" in listing.output


def test_classify_writes_every_image_including_unreadable_ones(model_dir: Path, classes_dir: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (20, 20), COLOURS[colour]).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n\ngreen\n")
    out = tmp_path / "labels.csv"
    result = runner.invoke(app, ["classify", str(model_dir), str(folder), "--labels", str(labels), "--out", str(out)],
                           env=ENV)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == ["0.png", "1.png", "2.png", "broken.jpg"]
    assert all(r["label"] in ("red", "blue", "green") for r in rows[:3])
    assert rows[3]["label"] == "" and rows[3]["error"]
    assert len(rows[0]["top"].split("; ")) == 3
    out_json = tmp_path / "labels.json"
    result = runner.invoke(app, ["classify", str(model_dir), str(folder), "--labels", "red,blue", "--threshold",
                                 "1.01", "--top-k", "1", "--out", str(out_json)], env=ENV)
    assert result.exit_code == 0, result.output
    labelled = json.loads(out_json.read_text())
    assert [r["label"] for r in labelled[:3]] == ["unknown"] * 3  # cosine never exceeds 1
    assert labelled[0]["probability"] is not None and len(labelled[0]["top"]) == 1
    assert labelled[3]["score"] is None


def test_data_specs_resolve_to_sources(tmp_path: Path, classes_dir: Path) -> None:
    captions = make_shapes_dataset(tmp_path / "shapes", per_class=1)
    expected = CaptionsSource(file=str(captions), caption_columns=("captions",))
    assert resolve_source(str(tmp_path / "shapes")) == expected and resolve_source(str(captions)) == expected
    odd = tmp_path / "odd.csv"
    odd.write_text("picture,words\na.png,a cat\n")
    with pytest.raises(DataError, match="needs an image column"):
        resolve_source(str(odd))
    assert resolve_source(str(classes_dir)) == ClassSource(root=str(classes_dir))
    assert resolve_source("emoji") == EmojiSource(split="test")
    assert resolve_source("emoji:val") == EmojiSource(split="val")
    assert resolve_source("shards/*.tar") == TarSource(shards=("shards/*.tar",))
    toml = tmp_path / "src.toml"
    toml.write_text(f'kind = "classes"\nroot = "{classes_dir}"\ntemplates = ["{{}}"]\n')
    assert resolve_source(str(toml)) == ClassSource(root=str(classes_dir), templates=("{}",))
    (tmp_path / "empty").mkdir()
    for spec, message in (("emoji:dev", "emoji split must be"), (str(tmp_path / "nope"), "no such file or folder"),
                          (str(tmp_path / "empty"), "neither class folders")):
        with pytest.raises(DataError, match=message):
            resolve_source(spec)


def test_eval_errors_are_one_line(model_dir: Path, tmp_path: Path) -> None:
    for args, message in ((["eval", "retrieval", str(tmp_path / "none"), "emoji"], "no such model directory"),
                          (["eval", "retrieval", str(model_dir), str(tmp_path / "none")], "no such file or folder"),
                          (["eval", "weat", str(model_dir), "weat99"], "unknown association test"),
                          (["eval", "retrieval", str(model_dir), "emoji", "--device", "gpu"], "unknown device 'gpu'"),
                          (["classify", str(model_dir), str(tmp_path), "--labels", "cat"], "at least two labels")):
        proc = subprocess.run([sys.executable, "-m", "polymodal.cli", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error:") and message in " ".join(proc.stderr.split())
