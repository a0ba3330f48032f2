"""Training end to end on generated shapes with a tiny model (seconds, not minutes)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polymodal.config import DualEncoderConfig, from_dict
from polymodal.data.sources import CaptionsSource, load_source
from polymodal.errors import ConfigError, DataError
from polymodal.eval.embed import embed_pair_set
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.factory import get_transforms
from polymodal.models import DualEncoder
from polymodal.tokenizer import Tokenizer
from polymodal.train.config import load_train_config
from polymodal.train.loop import train
from tests.helpers import TINY_MODEL, make_shapes_dataset, write_train_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root / "train", per_class=8, seed=0)
    make_shapes_dataset(root / "val", per_class=2, seed=1)
    return root


def _config(tmp_path: Path, shapes: Path, name: str = "run", **sections: dict) -> Path:
    return write_train_config(tmp_path / f"{name}.toml", shapes / "train", tmp_path / name, **sections)


def _val_metrics(model: DualEncoder, tokenizer: Tokenizer, shapes: Path) -> dict[str, float]:
    pairs = load_source(CaptionsSource(file=str(shapes / "val" / "captions.jsonl"), caption_columns=("captions",)))
    embedded = embed_pair_set(model, tokenizer, pairs, get_transforms(model.config))
    # Every drawing of a red circle is a correct answer for "a red circle": group by class.
    names = sorted({r.captions[0] for r in pairs.records})
    class_of = {r.group: names.index(r.captions[0]) for r in pairs.records}
    return retrieval_metrics(embedded.image_embeds, embedded.text_embeds,
                             np.array([class_of[g] for g in embedded.image_groups]),
                             np.array([class_of[g] for g in embedded.text_groups]))


@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_the_untrained_model(tmp_path: Path, shapes: Path) -> None:
    config = load_train_config(_config(tmp_path, shapes, train={"steps": 60, "log_every": 5,
                                                                 "checkpoint_every": 30}))
    result = train(config, show_progress=False)
    assert result.steps == 60 and (result.model_dir / "model.safetensors").is_file()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3

    tokenizer = Tokenizer.from_file(tmp_path / "run" / "tokenizer.json", 16, from_dict(
        DualEncoderConfig, TINY_MODEL).tokenizer)
    torch.manual_seed(config.seed)
    untrained = DualEncoder(from_dict(DualEncoderConfig, TINY_MODEL))
    from polymodal.factory import load_model

    before = _val_metrics(untrained, tokenizer, shapes)
    after = _val_metrics(load_model(result.model_dir, device="cpu"), tokenizer, shapes)
    assert after["t2i_r1"] > before["t2i_r1"] + 20 and after["mean_recall"] > before["mean_recall"] + 20


def test_validation_keeps_the_best_model_and_summary(tmp_path: Path, shapes: Path) -> None:
    config = load_train_config(_config(tmp_path, shapes, train={"steps": 6, "eval_every": 3},
                                       val={"kind": "captions", "file": str(shapes / "val" / "captions.jsonl"),
                                            "caption_columns": ["captions"]}))
    result = train(config, show_progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "eval" in line]
    assert [e["step"] for e in evals] == [3, 6]
    best = max(evals, key=lambda e: e["eval"]["mean_recall"])
    card = json.loads((result.model_dir / "config.json").read_text())
    assert card["metrics"] == best["eval"] == result.metrics
    assert card["training"]["steps"] == best["step"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_step"] == best["step"] and summary["steps"] == 6


def test_unreadable_images_are_skipped_and_named(tmp_path: Path, shapes: Path) -> None:
    data = tmp_path / "data"
    make_shapes_dataset(data, per_class=3, seed=2)
    (data / "images" / "red-circle-0.png").write_bytes(b"not a png")
    (data / "images" / "blue-square-1.png").write_bytes(b"")
    config = write_train_config(tmp_path / "c.toml", data, tmp_path / "out", train={"steps": 4, "batch_size": 12})
    result = train(load_train_config(config), show_progress=False)
    assert result.steps == 4
    assert {Path(name).name for name in result.skipped} <= {"red-circle-0.png", "blue-square-1.png"}
    assert result.skipped  # 4 batches of 12 from 36 records: at least one of them was drawn
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_images"] == result.skipped


def test_gradient_caching_trains_the_same_weights(tmp_path: Path, shapes: Path) -> None:
    plain = train(load_train_config(_config(tmp_path, shapes, "plain", train={"steps": 3})), show_progress=False)
    cached = train(load_train_config(_config(tmp_path, shapes, "cached", train={"steps": 3, "accum_steps": 4})),
                   show_progress=False)
    a, b = load_file(str(plain.model_dir / "model.safetensors")), load_file(str(cached.model_dir / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)


def test_finished_runs_are_not_trained_again_and_changed_configs_are_refused(tmp_path: Path, shapes: Path) -> None:
    path = _config(tmp_path, shapes, train={"steps": 3})
    first = train(load_train_config(path), show_progress=False)
    again = train(load_train_config(path, ["train.num_workers=0"]), show_progress=False)
    assert again.model_id == first.model_id and again.resumed_from == 3
    with pytest.raises(ConfigError, match=r"different configuration \(optim.lr\)"):
        train(load_train_config(path, ["optim.lr=0.1"]), show_progress=False)


def test_a_checkpoint_predating_a_new_setting_still_resumes(tmp_path: Path, shapes: Path) -> None:
    # a run written by an older polymodal lacks settings added since; at their defaults they are no change
    path = _config(tmp_path, shapes, train={"steps": 2})
    first = train(load_train_config(path), show_progress=False)
    checkpoint = first.run_dir / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    del state["config"]["head"]["rerank_top"]
    torch.save(state, checkpoint)
    again = train(load_train_config(path), show_progress=False)
    assert again.resumed_from == 2 and again.model_id == first.model_id
    with pytest.raises(ConfigError, match=r"different configuration \(head.rerank_top\)"):
        train(load_train_config(path, ["head.rerank_top=3"]), show_progress=False)


def test_early_stopping_and_time_budget(tmp_path: Path, shapes: Path) -> None:
    val = {"kind": "captions", "file": str(shapes / "val" / "captions.jsonl"), "caption_columns": ["captions"]}
    stuck = load_train_config(_config(tmp_path, shapes, "stuck", val=val, optim={"lr": 1e-12},
                                      train={"steps": 10, "eval_every": 1, "early_stopping_patience": 1}))
    result = train(stuck, show_progress=False)
    assert result.stopped_early and result.steps == 2  # step 2 did not beat step 1
    budget = load_train_config(_config(tmp_path, shapes, "budget", train={"steps": 50, "max_minutes": 1e-6}))
    result = train(budget, show_progress=False)
    assert result.steps == 1 and (result.model_dir / "config.json").is_file()


def test_bad_inputs_give_clear_errors(tmp_path: Path, shapes: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        train(load_train_config(_config(tmp_path, shapes, data={"file": str(tmp_path / "none.jsonl")})),
              show_progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no image-caption pairs"):
        train(load_train_config(_config(tmp_path, shapes, data={"file": str(empty)})), show_progress=False)
    with pytest.raises(ConfigError, match="needs a model with a logit bias"):
        train(load_train_config(_config(tmp_path, shapes, loss={"kind": "siglip"})), show_progress=False)
    with pytest.raises(DataError, match="fewer than one batch"):
        train(load_train_config(_config(tmp_path, shapes, train={"batch_size": 500})), show_progress=False)
    val = {"kind": "captions", "file": str(shapes / "val" / "captions.jsonl"), "caption_columns": ["captions"]}
    with pytest.raises(ConfigError, match="early_stopping_metric 'accuracy' is not one of"):
        train(load_train_config(_config(tmp_path, shapes, val=val, train={"early_stopping_metric": "accuracy"})),
              show_progress=False)


@pytest.mark.slow
def test_a_locked_pretrained_text_tower_stays_frozen(tmp_path: Path, shapes: Path) -> None:
    model = dict(TINY_MODEL, text={"kind": "hf", "model": "all-MiniLM-L6-v2", "context_length": 16})
    (tmp_path / "minilm-tiny.json").write_text(json.dumps(model))
    path = _config(tmp_path, shapes, train={"steps": 3},
                   model={"preset": str(tmp_path / "minilm-tiny.json"), "lock_text": True})
    result = train(load_train_config(path), show_progress=False)
    from polymodal.factory import create_model

    pretrained = create_model(from_dict(DualEncoderConfig, model), device="cpu").state_dict()
    trained = load_file(str(result.model_dir / "model.safetensors"))
    backbone = [k for k in trained if k.startswith("text.backbone.")]
    assert backbone and all(torch.equal(trained[k], pretrained[k]) for k in backbone)
    assert not torch.equal(trained["text.head.weight"], pretrained["text.head.weight"])


def test_a_fresh_start_clears_what_an_unfinished_attempt_left(tmp_path: Path, shapes: Path) -> None:
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 7, "loss": 9.9}\n')
    (out / "tokenizer.json").write_text("stale")
    result = train(load_train_config(_config(tmp_path, shapes, train={"steps": 3, "log_every": 1})),
                   show_progress=False)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and json.loads((result.model_dir / "config.json").read_text())["model_id"]
    assert (out / "tokenizer.json").read_text() != "stale"


def test_an_early_stopped_run_is_not_continued_by_a_rerun(tmp_path: Path, shapes: Path) -> None:
    val = {"kind": "captions", "file": str(shapes / "val" / "captions.jsonl"), "caption_columns": ["captions"]}
    path = _config(tmp_path, shapes, "stuck", val=val, optim={"lr": 1e-12},
                   train={"steps": 10, "eval_every": 1, "early_stopping_patience": 1,
                          "early_stopping_metric": "t2i_median_rank"})
    first = train(load_train_config(path), show_progress=False)
    again = train(load_train_config(path), show_progress=False)
    assert first.stopped_early and again.stopped_early and again.steps == first.steps == 2
    assert again.model_id == first.model_id


def test_errors_in_decoding_workers_come_back_as_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_shapes_dataset(data, per_class=2, seed=3)
    for image in (data / "images").iterdir():
        image.write_bytes(b"broken")
    config = write_train_config(tmp_path / "c.toml", data, tmp_path / "out", train={"num_workers": 1, "batch_size": 4})
    with pytest.raises(DataError) as info:
        train(load_train_config(config), show_progress=False)
    assert str(info.value).startswith("16 images in a row could not be read") and "Traceback" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, shapes: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        train(load_train_config(_config(tmp_path, shapes, train={"device": "cuda"})), show_progress=False)
    with pytest.raises(ConfigError, match="is not one of"):
        load_train_config(_config(tmp_path, shapes, train={"device": "gpu"}))
