"""`polymodal train` with task = "caption": the decoder learns to describe generated shapes,
validation reports BLEU and CIDEr, and the model it writes captions from the command line
and scores the same with `polymodal eval caption`."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.errors import ConfigError
from polymodal.train.config import load_train_config
from polymodal.train.loop import train
from tests.helpers import TINY_MODEL, make_shapes_dataset, write_toml


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("caption")
    make_shapes_dataset(root / "data", per_class=4)
    (root / "tiny-model.json").write_text(json.dumps(TINY_MODEL))
    return root


def write_config(root: Path, output: Path, **train: object) -> Path:
    source = {"kind": "captions", "file": str(root / "data" / "captions.jsonl"), "caption_columns": ["captions"]}
    return write_toml(output.parent / f"{output.name}.toml", {"output": str(output), "task": "caption"}, {
        "data": source, "val": source,
        "model": {"preset": str(root / "tiny-model.json")},
        "head": {"width": 32, "layers": 2, "heads": 4, "context_length": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 10},
        "augment": {"scale": [1.0, 1.0]},
        "train": {"batch_size": 16, "steps": 120, "num_workers": 0, "log_every": 10, "eval_every": 60, **train}})


def test_a_caption_run_learns_and_its_model_captions_and_is_scored(shapes: Path, tmp_path: Path) -> None:
    result = train(load_train_config(write_config(shapes, tmp_path / "run")), show_progress=False)
    card = json.loads((result.model_dir / "config.json").read_text())
    assert card["architecture"] == "captioner" and card["training"]["task"] == "caption"
    assert set(result.metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert result.metrics["bleu1"] > 60  # the shapes' captions are easy to learn; chance is far lower

    image = shapes / "data" / "images" / "red-circle-0.png"
    written = CliRunner().invoke(app, ["caption", str(result.model_dir), str(image), "--beam", "1", "--json"])
    assert written.exit_code == 0, written.output
    caption = json.loads(written.stdout)[0]["caption"]
    assert caption and set(caption.replace(",", " ").split()) <= {"a", "red", "green", "blue", "yellow", "circle",
                                                                  "square", "triangle"}

    out = tmp_path / "eval"
    scored = CliRunner().invoke(app, ["eval", "caption", str(result.model_dir),
                                      str(shapes / "data" / "captions.jsonl"), "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"]["cider"] == pytest.approx(result.metrics["cider"])  # the run's own validation
    assert len(saved["tables"]["examples"]) == 20


def test_caption_configuration_mistakes_are_clear(shapes: Path, tmp_path: Path) -> None:
    config = write_config(shapes, tmp_path / "bad")
    with pytest.raises(ConfigError, match="a caption run reports cider"):
        load_train_config(config, ["train.early_stopping_metric=accuracy"])
    with pytest.raises(ConfigError, match="lock_text is for contrastive runs"):
        load_train_config(config, ["model.lock_text=true"])
