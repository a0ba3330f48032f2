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


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "data", per_class=6)
    sections = {"train": {"steps": STEPS, "checkpoint_every": 10, "batch_size": 24, "num_workers": 1}}
    straight = write_train_config(tmp_path / "straight.toml", tmp_path / "data", tmp_path / "straight", **sections)
    killed = write_train_config(tmp_path / "killed.toml", tmp_path / "data", tmp_path / "killed", **sections)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_state(checkpoint)["step"]
    assert 0 < killed_at < STEPS
    assert not (tmp_path / "killed" / "model").exists()

    resumed = subprocess.run(_command(killed), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    done = subprocess.run(_command(straight), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # no step logged twice, none missing
