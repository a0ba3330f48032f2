"""`polymodal train` with task = "fusion": a dual encoder and a fusion model over its image
tower learn together (contrastive + ITM + MLM); the run writes both model directories, the
saved fusion model reproduces the run's re-ranking validation, `polymodal eval rerank`
reports the gain over the dual encoder, and a killed run resumes to the same weights."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.sources import load_source
from polymodal.errors import ConfigError
from polymodal.eval.rerank import rerank_pair_set
from polymodal.factory import get_tokenizer, load_model
from polymodal.task_models import load_fusion_model
from polymodal.train.config import load_train_config
from polymodal.train.loop import train
from tests.helpers import TINY_MODEL, assert_same_weights, kill_and_resume, make_shapes_dataset, write_toml


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fusion")
    make_shapes_dataset(root / "data", per_class=2)
    (root / "tiny-model.json").write_text(json.dumps(TINY_MODEL))
    return root


def write_config(root: Path, output: Path, head: dict[str, object] | None = None, **train: object) -> Path:
    source = {"kind": "captions", "file": str(root / "data" / "captions.jsonl"), "caption_columns": ["captions"]}
    return write_toml(output.parent / f"{output.name}.toml", {"output": str(output), "task": "fusion"}, {
        "data": source, "val": source,
        "model": {"preset": str(root / "tiny-model.json"), "tokenizer_min_frequency": 1},
        "head": {"width": 32, "layers": 2, "heads": 4, "context_length": 8, "rerank_top": 5, **(head or {})},
        "optim": {"lr": 3e-3, "warmup_steps": 10},
        "augment": {"scale": [1.0, 1.0]},
        "train": {"batch_size": 12, "steps": 60, "num_workers": 0, "log_every": 5, "eval_every": 30,
                  "checkpoint_every": 10, **train}})


def test_a_fusion_run_writes_both_models_and_its_reranking_is_reproduced(shapes: Path, tmp_path: Path) -> None:
    config = load_train_config(write_config(shapes, tmp_path / "run"))
    result = train(config, show_progress=False)
    card = json.loads((result.model_dir / "config.json").read_text())
    assert card["architecture"] == "fusion" and card["training"]["task"] == "fusion"
    assert {"rerank_mean_recall", "rerank_t2i_r1", "t2i_r1", "gain_r1", "candidate_recall"} <= set(result.metrics)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    assert all({"contrastive_loss", "itm_loss", "mlm_loss"} <= set(r) for r in steps)
    for name in ("contrastive_loss", "mlm_loss"):  # both learn; ITM needs longer (tests/unit/test_fusion_task.py)
        assert sum(r[name] for r in steps[-3:]) < sum(r[name] for r in steps[:3]), name

    # the saved pair gives exactly the validation numbers of the run: same tower, same heads
    dual_dir = tmp_path / "run" / "dual_encoder"
    fusion, fusion_tokenizer = load_fusion_model(result.model_dir)
    assert config.val is not None
    stages: dict[str, list[tuple[int, int]]] = {}
    again = rerank_pair_set(load_model(dual_dir), get_tokenizer(dual_dir), fusion, fusion_tokenizer,
                            load_source(config.val), top_n=5, first_caption_only=True,
                            progress=lambda stage, done, total: stages.setdefault(stage, []).append((done, total)))
    assert again.metrics == pytest.approx(result.metrics)
    # progress: the three stages in order, each counting up to its total (24 images; 24 queries x top 5)
    assert list(stages) == ["dual encoder: images", "fusion model: images", "fusion model: ITM"]
    assert [steps[-1] for steps in stages.values()] == [(24, 24), (24, 24), (120, 120)]
    assert all(a[0] < b[0] for steps in stages.values() for a, b in zip(steps, steps[1:], strict=False))
    assert again.queries == 24 and again.images == 24
    # the fusion model's copy of the image tower is the dual encoder's
    visual = load_model(dual_dir).visual.state_dict()
    for name, value in fusion.vision.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(value, visual[name], rtol=0, atol=0)

    out = tmp_path / "eval"
    evaluated = CliRunner().invoke(app, ["eval", "rerank", str(dual_dir), str(result.model_dir),
                                         str(shapes / "data" / "captions.jsonl"), "--top", "4", "--out", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    saved = json.loads((out / "result.json").read_text())
    metrics = saved["metrics"]
    assert saved["info"]["queries"] == 48 and saved["info"]["top_n"] == 4  # every caption is a query
    # only the top 4 are reordered: R@5 and R@10 cannot change, R@1 cannot pass the top 4's recall
    assert metrics["rerank_t2i_r5"] == metrics["t2i_r5"] and metrics["rerank_t2i_r10"] == metrics["t2i_r10"]
    assert metrics["rerank_t2i_r1"] <= metrics["candidate_recall"] <= metrics["t2i_r5"]
    assert metrics["gain_r1"] == pytest.approx(metrics["rerank_t2i_r1"] - metrics["t2i_r1"])
    assert saved["info"]["added_ms_per_query"] > 0 and "adds" in evaluated.output
    assert "re-ranked" in (out / "report.md").read_text()


def test_a_killed_fusion_run_resumes_to_the_same_weights(shapes: Path, tmp_path: Path) -> None:
    # with the negatives' temperature annealed: a resumed run must pick the schedule up where it was
    head = {"itm_negative_temperature": 100.0, "itm_negative_temperature_end": 1.0}
    settings = {"steps": 20, "eval_every": 10, "num_workers": 1, "log_every": 1}
    kill_and_resume(write_config(shapes, tmp_path / "straight", head, **settings),
                    write_config(shapes, tmp_path / "killed", head, **settings), tmp_path / "killed")
    for folder in ("model", "dual_encoder"):
        assert_same_weights(tmp_path / "straight" / folder, tmp_path / "killed" / folder)
    logged = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    temperatures = [r["itm_negative_temperature"] for r in logged if "loss" in r]
    # steps 1..20 logged once each, from 100 down to 1 geometrically (step s of 20 used 100^(1 - s/19))
    assert temperatures == pytest.approx([100.0 ** (1 - s / 19) for s in range(20)])


def test_fusion_configuration_mistakes_are_clear(shapes: Path, tmp_path: Path) -> None:
    config = write_config(shapes, tmp_path / "bad")
    with pytest.raises(ConfigError, match="a fusion run reports rerank_mean_recall"):
        load_train_config(config, ["train.early_stopping_metric=accuracy"])
    with pytest.raises(ConfigError, match="accum_steps"):
        load_train_config(config, ["train.accum_steps=2"])
    with pytest.raises(ConfigError, match="loss weights"):
        load_train_config(config, ["head.itm_weight=-1"])
    for bad in ("head.itm_negative_temperature=0", "head.itm_negative_temperature_end=-1"):
        with pytest.raises(ConfigError, match="itm_negative_temperature"):
            load_train_config(config, [bad])
    resnet = tmp_path / "resnet.json"
    resnet.write_text(json.dumps({**TINY_MODEL, "vision": {"kind": "resnet", "image_size": 32, "widths": [16, 32],
                                                           "depths": [1, 1]}}))
    with pytest.raises(ConfigError, match="needs a ViT image tower"):
        train(load_train_config(config, [f"model.preset={json.dumps(str(resnet))}"]), show_progress=False)
