"""`polymodal train` with task = "vqa" on a generated shapes set: the run learns, reports
accuracy per question type, writes a fusion model that `polymodal ask` answers with, and
resumes after a kill with exactly the weights of an uninterrupted run."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.builtin.shapes import build_shapes_dataset
from polymodal.data.sources import QuestionsSource, load_source
from polymodal.errors import ConfigError
from polymodal.task_models import load_fusion_model
from polymodal.train.config import load_train_config
from polymodal.train.loop import train
from tests.helpers import TINY_MODEL, assert_same_weights, kill_and_resume, write_toml


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vqa")
    build_shapes_dataset(root / "shapes", scenes=60, size=32, seed=2)
    (root / "tiny-model.json").write_text(json.dumps(TINY_MODEL))
    return root


def write_config(root: Path, output: Path, steps: int = 40, **train: object) -> Path:
    questions = str(root / "shapes" / "questions.jsonl")
    return write_toml(output.parent / f"{output.name}.toml", {"output": str(output), "task": "vqa"}, {
        "data": {"kind": "questions", "file": questions, "split": "train"},
        "val": {"kind": "questions", "file": questions, "split": "val"},
        "model": {"preset": str(root / "tiny-model.json")},
        "head": {"width": 32, "layers": 2, "heads": 4, "context_length": 16},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": {"batch_size": 16, "steps": steps, "num_workers": 0, "log_every": 5, "eval_every": 20,
                  "checkpoint_every": 10, **train}})


def test_a_vqa_run_learns_reports_per_type_and_writes_a_model_ask_uses(shapes: Path, tmp_path: Path) -> None:
    result = train(load_train_config(write_config(shapes, tmp_path / "run")), show_progress=False)
    card = json.loads((result.model_dir / "config.json").read_text())
    assert card["architecture"] == "fusion" and card["training"]["task"] == "vqa"
    assert {"accuracy", "balanced_accuracy", "accuracy_count", "accuracy_exist"} <= set(result.metrics)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    model, _ = load_fusion_model(result.model_dir)
    assert model.model_config is not None
    answers = load_source(QuestionsSource(file=str(shapes / "shapes" / "questions.jsonl"))).class_names
    assert list(model.model_config.answers) == answers

    out = tmp_path / "eval"
    questions = str(shapes / "shapes" / "questions.jsonl")
    evaluated = CliRunner().invoke(app, ["eval", "vqa", str(result.model_dir), questions, "--split", "val",
                                         "--out", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(result.metrics["accuracy"])  # the run's own validation
    assert {row["type"] for row in saved["tables"]["accuracy per question type"]} == \
        {k.removeprefix("accuracy_") for k in result.metrics if k.startswith("accuracy_")}

    question = json.loads((shapes / "shapes" / "questions.jsonl").read_text().splitlines()[0])
    asked = CliRunner().invoke(app, ["ask", str(result.model_dir), str(shapes / "shapes" / question["image"]),
                                     question["question"], "--json", "--top", "2"])
    assert asked.exit_code == 0, asked.output
    ranked = json.loads(asked.stdout)["answers"]
    assert len(ranked) == 2 and ranked[0]["answer"] in answers and ranked[0]["probability"] >= ranked[1]["probability"]


def test_a_killed_vqa_run_resumes_to_the_same_weights(shapes: Path, tmp_path: Path) -> None:
    kill_and_resume(write_config(shapes, tmp_path / "straight", steps=30, num_workers=1),
                    write_config(shapes, tmp_path / "killed", steps=30, num_workers=1), tmp_path / "killed")
    assert_same_weights(tmp_path / "straight" / "model", tmp_path / "killed" / "model")


def test_vqa_configuration_mistakes_are_clear(shapes: Path, tmp_path: Path) -> None:
    config = write_config(shapes, tmp_path / "bad")
    with pytest.raises(ConfigError, match="a vqa run reports accuracy"):
        load_train_config(config, ["train.early_stopping_metric=mean_recall"])
    captions = tmp_path / "captions.toml"
    captions.write_text(f'output = "{tmp_path / "c"}"\ntask = "vqa"\n[data]\nkind = "captions"\n'
                        f'file = "{shapes / "shapes" / "captions.jsonl"}"\ncaption_columns = ["captions"]\n'
                        f'[model]\npreset = "{shapes / "tiny-model.json"}"\n')
    with pytest.raises(ConfigError, match="needs a questions source"):
        train(load_train_config(captions), show_progress=False)
