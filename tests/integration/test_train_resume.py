"""Kill a training process with SIGKILL mid-run, run the same command again: it resumes
and ends with exactly the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polymodal.train.state import load_state
from tests.helpers import make_shapes_dataset, write_train_config

STEPS = 60


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "polymodal.cli", "train", str(config), "--quiet"]


ENV = dict(os.environ, PYTHONUNBUFFERED="1")
SECTIONS = {"train": {"steps": STEPS, "checkpoint_every": 10, "batch_size": 24, "num_workers": 1}}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The data and the weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    make_shapes_dataset(root / "data", per_class=6)
    config = write_train_config(root / "straight.toml", root / "data", root / "straight", **SECTIONS)
    done = subprocess.run(_command(config), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root / "data", load_file(str(root / "straight" / "model" / "model.safetensors"))


def _interrupt_after_first_checkpoint(config: Path, out: Path, sig: signal.Signals) -> int:
    process = subprocess.Popen(_command(config), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "run the same command to resume" in stderr
    return load_state(checkpoint)["step"]


def _resume_and_compare(config: Path, out: Path, expected: dict[str, torch.Tensor]) -> None:
    resumed = subprocess.run(_command(config), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.equal(weights[name], expected[name]), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # no step logged twice, none missing


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, straight: tuple) -> None:
    data, expected = straight
    config = write_train_config(tmp_path / "killed.toml", data, tmp_path / "killed", **SECTIONS)
    killed_at = _interrupt_after_first_checkpoint(config, tmp_path / "killed", signal.SIGKILL)
    assert 0 < killed_at < STEPS
    assert not (tmp_path / "killed" / "model").exists()
    _resume_and_compare(config, tmp_path / "killed", expected)


@pytest.mark.slow
def test_ctrl_c_saves_the_finished_step_and_resumes_exactly(tmp_path: Path, straight: tuple) -> None:
    data, expected = straight
    config = write_train_config(tmp_path / "stopped.toml", data, tmp_path / "stopped", **SECTIONS)
    stopped_at = _interrupt_after_first_checkpoint(config, tmp_path / "stopped", signal.SIGINT)
    assert 10 <= stopped_at < STEPS  # saved at the step Ctrl-C arrived in, not at the last checkpoint only
    _resume_and_compare(config, tmp_path / "stopped", expected)
