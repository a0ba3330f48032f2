"""Evaluators on a fake one-hot encoder whose every result is known exactly: an image
embeds as the one-hot of its dominant colour channel, a text as the one-hot of the
first colour word in it."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from polymodal.config import PreprocessConfig
from polymodal.data.records import ImageRef, PairRecord, PairSet
from polymodal.data.sources import ClassSource, load_classes
from polymodal.errors import DataError
from polymodal.eval.association import evaluate_association, load_tests
from polymodal.eval.linear_probe import (
    evaluate_linear_probe,
    few_shot_indices,
    fit_logistic_regression,
    split_by_hash,
)
from polymodal.eval.report import format_value, write_report
from polymodal.eval.retrieval import evaluate_retrieval
from polymodal.eval.zeroshot import class_embeddings, evaluate_zeroshot, resolve_templates
from polymodal.transforms import ImageTransform
from tests.helpers import COLOURS

WORDS = ("red", "green", "blue")  # embedding dims 0..2; dim 3 = "no colour"
RGB = {colour: COLOURS[colour] for colour in WORDS}


class OneHotEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(pixels.mean(dim=(2, 3)).argmax(dim=1), 4).float()

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.one_hot(input_ids[:, 0], 4).float()

    def logit_params(self) -> tuple[torch.Tensor, None]:
        return self.scale, None


class ColourWordTokenizer:
    def __call__(self, texts: list[str] | str) -> SimpleNamespace:
        texts = [texts] if isinstance(texts, str) else texts
        ids = [next((i for i, w in enumerate(WORDS) if w in t.replace(".", " ").split()), 3) for t in texts]
        batch = SimpleNamespace(input_ids=torch.tensor(ids)[:, None], attention_mask=torch.ones(len(ids), 1))
        batch.to = lambda device: batch
        return batch


MODEL, TOKENIZER = OneHotEncoder(), ColourWordTokenizer()
TRANSFORM = ImageTransform(PreprocessConfig(image_size=16))


def solid(path: Path, colour: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), RGB[colour]).save(path)
    return path


def class_folders(root: Path, images: dict[str, list[str]]) -> PairSet:
    """root/<class>/<i>.png drawn in the listed colours (a colour unlike its folder = a hard case)."""
    for label, colours in images.items():
        for i, colour in enumerate(colours):
            solid(root / label / f"{i}.png", colour)
    return load_classes(ClassSource(root=str(root), templates=("{}",)))


# --------------------------------------------------------------------------- retrieval


def test_retrieval_on_one_hot_embeddings_is_exact(tmp_path: Path) -> None:
    # Two red images, one green, one blue; the blue image's caption wrongly says red.
    records = [PairRecord(ImageRef(str(solid(tmp_path / f"{i}.png", c))), (caption,), group=i, key=str(i))
               for i, (c, caption) in enumerate([("red", "a red thing"), ("red", "red again"),
                                                 ("green", "green"), ("blue", "red sadly")])]
    evaluation = evaluate_retrieval(MODEL, TOKENIZER, TRANSFORM, PairSet(records, "toy"))
    m = evaluation.metrics
    # t2i: red captions see the two red images tied first (1/2 at R@1); "green" is exact;
    # "red sadly" ranks its blue image after both reds, tied with green for places 3-4.
    assert m["t2i_r1"] == pytest.approx(100 * (0.5 + 0.5 + 1 + 0) / 4)
    assert m["t2i_median_rank"] == pytest.approx(np.median([1.5, 1.5, 1, 3.5]))
    # i2t: each red image ties with three red captions (its own among them): R@1 = 1/3;
    # no caption says blue, so the blue image sees all four tied at 0: R@1 = 1/4.
    assert m["i2t_r1"] == pytest.approx(100 * (1 / 3 + 1 / 3 + 1 + 1 / 4) / 4)
    assert m["t2i_mrr"] == pytest.approx(100 * ((1 + 1 / 2) / 2 * 2 + 1 + (1 / 3 + 1 / 4) / 2) / 4)
    assert evaluation.primary_metric == "mean_recall"
    assert m["threshold"] == 1.0  # matched pairs score 1 or 0; unmatched mostly 0


# --------------------------------------------------------------------------- zero-shot


def test_zeroshot_on_one_hot_embeddings_is_exact(tmp_path: Path) -> None:
    data = class_folders(tmp_path, {"red": ["red", "red", "blue"], "green": ["green", "green"],
                                    "blue": ["blue"]})
    evaluation = evaluate_zeroshot(MODEL, TOKENIZER, TRANSFORM, data)
    assert evaluation.metrics["top1"] == pytest.approx(100 * 5 / 6)
    assert evaluation.metrics["balanced_accuracy"] == pytest.approx(100 * (2 / 3 + 1 + 1) / 3)
    assert "top5" not in evaluation.metrics  # only 3 classes
    matrix = np.array(evaluation.plots[0].data["matrix"])
    classes = evaluation.plots[0].data["classes"]  # sorted folder names: blue, green, red
    assert matrix[classes.index("red"), classes.index("blue")] == 1.0
    worst = evaluation.tables["Per-class accuracy (worst first)"][0]
    assert worst["class"] == "red" and worst["most confused with"] == "blue (1)"


def test_class_embeddings_average_templates_and_synonyms() -> None:
    # "crimson" has no colour word, so its synonym "red" pulls the class half-way to red.
    embeds = class_embeddings(MODEL, TOKENIZER, [["crimson", "red"], ["green"]], ["a {} thing", "{}"])
    assert embeds[0] == pytest.approx(np.array([1, 0, 0, 1]) / np.sqrt(2))
    assert embeds[1] == pytest.approx([0, 1, 0, 0])


def test_templates_are_checked() -> None:
    assert len(resolve_templates(["ensemble"])) == 8
    assert resolve_templates(["default", "a {} picture"]) == ("a photo of a {}.", "a {} picture")
    with pytest.raises(DataError, match="exactly one"):
        resolve_templates(["no placeholder"])


def test_zeroshot_needs_labelled_data(tmp_path: Path) -> None:
    pairs = PairSet([PairRecord(ImageRef(str(solid(tmp_path / "a.png", "red"))), ("red",), 0)], "captions")
    with pytest.raises(DataError, match="labelled images"):
        evaluate_zeroshot(MODEL, TOKENIZER, TRANSFORM, pairs)


# --------------------------------------------------------------------------- linear probe


def test_logistic_regression_separates_blobs() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    labels = rng.integers(0, 3, 300)
    features = centres[labels] + rng.normal(size=(300, 2))
    weight, bias = fit_logistic_regression(features, labels, 3, penalty=1e-3)
    accuracy = ((features @ weight + bias).argmax(axis=1) == labels).mean()
    assert accuracy > 0.95
    # A huge penalty shrinks the weights towards 0.
    strong, _ = fit_logistic_regression(features, labels, 3, penalty=10.0)
    assert np.abs(strong).max() < 0.1 * np.abs(weight).max()


def test_linear_probe_on_separable_features(tmp_path: Path) -> None:
    train = class_folders(tmp_path / "train", {c: [c] * 4 for c in RGB})
    test = class_folders(tmp_path / "test", {"red": ["red", "green"], "green": ["green"], "blue": ["blue"]})
    evaluation = evaluate_linear_probe(MODEL, TRANSFORM, train, test, shots=(1, 2), repeats=2)
    # One-hot features are linearly separable: every test image but the green one in red/ is right.
    assert evaluation.metrics["top1"] == pytest.approx(75.0)
    assert evaluation.metrics["top1_1shot"] == pytest.approx(75.0)
    assert evaluation.metrics["top1_2shot_std"] == 0.0
    assert evaluation.plots[0].data["shots"] == [1, 2]


def test_linear_probe_matches_classes_by_name(tmp_path: Path) -> None:
    train = class_folders(tmp_path / "train", {c: [c] * 3 for c in RGB})
    only_blue = class_folders(tmp_path / "blue-only", {"blue": ["blue", "blue"]})  # its class 0 is train's class 0
    only_red = class_folders(tmp_path / "red-only", {"red": ["red", "red"]})  # ... but here class 0 is red
    assert evaluate_linear_probe(MODEL, TRANSFORM, train, only_blue).metrics["top1"] == 100.0
    assert evaluate_linear_probe(MODEL, TRANSFORM, train, only_red).metrics["top1"] == 100.0
    unknown = class_folders(tmp_path / "test", {"red": ["red"], "purple": ["blue"]})
    with pytest.raises(DataError, match="lacks: \\['purple'\\]"):
        evaluate_linear_probe(MODEL, TRANSFORM, train, unknown)


def test_classes_missing_from_training_are_never_predicted() -> None:
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    weight, bias = fit_logistic_regression(features, np.array([0, 0, 2, 2]), 3, penalty=1e-3)
    assert np.isneginf(bias[1]) and np.isfinite(bias[[0, 2]]).all()
    assert ((features @ weight + bias).argmax(axis=1) == [0, 0, 2, 2]).all()


def test_few_shot_and_hash_split(tmp_path: Path) -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    chosen = few_shot_indices(labels, 2, seed=0)
    assert sorted(np.bincount(labels[chosen]).tolist()) == [1, 2, 2]
    data = class_folders(tmp_path, {c: [c] * 10 for c in RGB})
    train, test = split_by_hash(data)
    assert len(train) + len(test) == 30 and len(test) > 0
    assert {r.key for r in train.records}.isdisjoint(r.key for r in test.records)
    assert split_by_hash(data)[1].records == test.records  # fixed, not random


# --------------------------------------------------------------------------- association tests


def test_image_association_test_from_folders(tmp_path: Path) -> None:
    for i in range(4):
        solid(tmp_path / "reds" / f"{i}.png", "red")
        solid(tmp_path / "blues" / f"{i}.png", "blue")
    spec = {"colour": {"targets": [{"name": "red images", "images": str(tmp_path / "reds")},
                                   {"name": "blue images", "images": str(tmp_path / "blues")}],
                       "attributes": [{"name": "red words", "words": ["red", "red one", "so red"]},
                                      {"name": "blue words", "words": ["blue", "blue sky"]}]}}
    (tmp_path / "tests.json").write_text(json.dumps(spec))
    evaluation = evaluate_association(MODEL, TOKENIZER, TRANSFORM, load_tests(str(tmp_path / "tests.json")))
    # s = +1 for every red image, -1 for every blue one: d = 2 sqrt(7/8); the observed
    # split is the only one of C(8, 4) = 70 with the largest statistic, so p = 1/70.
    assert evaluation.metrics["colour_effect_size"] == pytest.approx(2 * np.sqrt(7 / 8))
    assert evaluation.metrics["colour_p_value"] == 1 / 70
    row = evaluation.tables["Association tests (d > 0: X is closer to A than Y is)"][0]
    assert row["kind"] == "iEAT" and row["partitions"] == "70"


def test_builtin_tests_and_bad_specs(tmp_path: Path) -> None:
    tests = load_tests("all")
    assert "weat1-flowers-insects" in tests and tests["ieat-emoji-skin-tone"].is_image_test
    assert len(tests["weat1-flowers-insects"].a.words) == 25
    with pytest.raises(DataError, match="unknown association test"):
        load_tests("weat99")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"t": {"targets": [{"name": "x", "words": ["a"]}], "attributes": []}}))
    with pytest.raises(DataError, match="two sets"):
        load_tests(str(bad))
    bad.write_text(json.dumps({"t": {"targets": ["pleasant", "unpleasant"], "attributes": ["pleasant", "nope"]}}))
    with pytest.raises(DataError, match="no word list 'nope'"):
        load_tests(str(bad))
    bad.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        load_tests(str(bad))


# --------------------------------------------------------------------------- reports


def test_report_holds_the_numbers_of_the_json_result(tmp_path: Path) -> None:
    data = class_folders(tmp_path / "data", {"red": ["red", "red", "blue"], "green": ["green"], "blue": ["blue"]})
    (tmp_path / "data" / "green" / "broken.png").write_bytes(b"not a png")
    data = load_classes(ClassSource(root=str(tmp_path / "data"), templates=("{}",)))
    report = write_report(evaluate_zeroshot(MODEL, TOKENIZER, TRANSFORM, data), tmp_path / "out")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    text = report.read_text()
    assert result["primary_metric"] == "top1" and result["metrics"]["top1"] == pytest.approx(80.0)
    for name, value in result["metrics"].items():
        assert f"| {format_value(value)} |" in text or f"| {format_value(value)}\n" in text, name
    assert "**top1** (primary metric): **80.00**" in text
    assert result["skipped"][0]["item"].endswith("broken.png") and "broken.png" in text
    for plot in ("confusion", "per_class", "similarity_histogram"):
        assert f"({plot}.png)" in text
        with Image.open(tmp_path / "out" / f"{plot}.png") as image:
            assert image.format == "PNG" and image.width > 100


def test_a_failing_plot_keeps_the_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polymodal.eval.plots as plots
    from polymodal.eval.report import Evaluation, Plot

    def broken(plot: Plot, path: Path) -> None:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "draw", broken)
    evaluation = Evaluation("retrieval", {"mean_recall": 12.5, "odd": float("nan")}, "mean_recall",
                            plots=[Plot("recall_curve", "Recall@K", {})])
    with pytest.warns(UserWarning, match="could not draw recall_curve.png: no fonts"):
        report = write_report(evaluation, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"] == {"mean_recall": 12.5, "odd": None}  # JSON has no NaN
    assert "recall_curve.png" not in report.read_text()


def test_retrieval_needs_two_groups(tmp_path: Path) -> None:
    records = [PairRecord(ImageRef(str(solid(tmp_path / "a.png", "red"))), ("red",), group=0)]
    with pytest.raises(DataError, match="at least two images"):
        evaluate_retrieval(MODEL, TOKENIZER, TRANSFORM, PairSet(records, "one"))
