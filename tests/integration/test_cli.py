"""The command line, end to end (CliRunner in-process; a subprocess for exit codes)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from polymodal import __version__
from polymodal.cli import app
from polymodal.factory import get_tokenizer, load_model
from polymodal.registry import list_presets
from tests.helpers import make_hf_clip_dir, make_shapes_dataset, write_train_config

runner = CliRunner()


def test_version_and_help() -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"polymodal {__version__}"
    result = runner.invoke(app, ["models", "--help"])
    assert result.exit_code == 0 and "convert" in result.output


def test_the_command_line_tunes_the_allocator_before_running(monkeypatch) -> None:
    import polymodal.cli
    import polymodal.runtime

    seen: list[bool] = []
    monkeypatch.setattr(polymodal.runtime, "tune_allocator", lambda enabled=True: seen.append(enabled) or True)
    monkeypatch.setattr(sys, "argv", ["polymodal", "--version"])
    with pytest.raises(SystemExit) as exit_:
        polymodal.cli.main()
    assert exit_.value.code in (0, None) and seen == [True]


def test_models_list_shows_every_preset() -> None:
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in list_presets():
        assert name in result.output
    assert "ViT/32 768x12" in result.output  # clip-vit-b-32


def test_models_convert_then_info(tmp_path: Path) -> None:
    src = make_hf_clip_dir(tmp_path / "hf")
    out = tmp_path / "converted"
    result = runner.invoke(app, ["models", "convert", str(src), str(out)])
    assert result.exit_code == 0, result.output
    model = load_model(out, device="cpu")
    assert torch.isfinite(model.encode_text(get_tokenizer(out)("a cat").input_ids)).all()
    info = runner.invoke(app, ["models", "info", str(out)], env={"COLUMNS": "200"})
    assert info.exit_code == 0
    model_id = result.output.split("model id ")[1].split(")")[0]
    assert f"model id: {model_id}" in info.output
    assert "transformers CLIPModel" in info.output


def test_user_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "data", per_class=1)
    config = write_train_config(tmp_path / "c.toml", tmp_path / "data", tmp_path / "run")
    for args, message in ((["models", "info", "vit-tiny-46"], "did you mean vit-tiny-64"),
                          (["models", "convert", str(tmp_path), str(tmp_path / "out")],
                           "not a Hugging Face CLIP directory"),
                          (["train", str(config), "--set", "train.batchsize=4"], "unknown key(s) ['batchsize']"),
                          (["train", str(tmp_path / "none.toml")], "no such config file")):
        proc = subprocess.run([sys.executable, "-m", "polymodal.cli", *args], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error:") and message in " ".join(proc.stderr.split())
        assert "Traceback" not in proc.stderr


def test_unknown_option_is_rejected() -> None:
    result = runner.invoke(app, ["models", "list", "--colour"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_train_command_reports_steps_model_and_validation(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "data", per_class=2)
    config = write_train_config(tmp_path / "c.toml", tmp_path / "data", tmp_path / "run",
                                val={"kind": "captions", "file": str(tmp_path / "data" / "captions.jsonl"),
                                     "caption_columns": ["captions"]})
    result = runner.invoke(app, ["train", str(config), "--set", "train.steps=2", "--quiet"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "run" / "model", device="cpu")
    assert "trained 2/2 steps" in result.output and "text -> image" in result.output
    assert str(tmp_path / "run" / "model") in result.output.replace("\n", "")
    assert model.config.embed_dim == 32


def test_data_build_emoji(tmp_path: Path) -> None:
    from polymodal.data.builtin.emoji import EMOJI_FONT, EMOJI_TEST

    if not (EMOJI_FONT.is_file() and EMOJI_TEST.is_file()):
        pytest.skip("needs fonts-noto-color-emoji and unicode-data (scripts/setup.sh)")
    result = runner.invoke(app, ["data", "build", "emoji", str(tmp_path / "emoji"), "--size", "32"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    count = len((tmp_path / "emoji" / "captions.jsonl").read_text().splitlines())
    assert f"wrote {count} emoji" in result.output and count > 3000
    assert len(list((tmp_path / "emoji" / "images").iterdir())) == count
