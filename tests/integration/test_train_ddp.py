"""Data-parallel training under torchrun with 2 CPU processes (gloo) gives the weights of
one process training on the same global batches."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_shapes_dataset, write_train_config


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path / "data", per_class=4)
    (tmp_path / "data" / "images" / "green-square-2.png").write_bytes(b"corrupt")  # met by one of the ranks
    make_shapes_dataset(tmp_path / "val", per_class=1, seed=5)
    val = {"kind": "captions", "file": str(tmp_path / "val" / "captions.jsonl"), "caption_columns": ["captions"]}
    sections = {"train": {"steps": 4, "batch_size": 24, "num_workers": 0, "eval_every": 2}, "val": val}
    single = write_train_config(tmp_path / "single.toml", tmp_path / "data", tmp_path / "single", **sections)
    double = write_train_config(tmp_path / "ddp.toml", tmp_path / "data", tmp_path / "ddp", **sections)
    run = subprocess.run([sys.executable, "-m", "polymodal.cli", "train", str(single), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "polymodal.cli", "train", str(double), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
    # Rank 0 validated, every rank's unreadable images reached the summary.
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("single", "ddp")]
    corrupt = str(tmp_path / "data" / "images" / "green-square-2.png")
    assert [list(s["skipped_images"]) for s in summaries] == [[corrupt], [corrupt]]
    assert summaries[1]["metrics"]["mean_recall"] == pytest.approx(summaries[0]["metrics"]["mean_recall"], abs=1e-6)
    # Each rank saw half of every batch: without the gradient exchange the result would
    # be a run on half batches, which ends elsewhere.
    half = write_train_config(tmp_path / "half.toml", tmp_path / "data", tmp_path / "half",
                              train={"steps": 4, "batch_size": 12, "num_workers": 0})
    run = subprocess.run([sys.executable, "-m", "polymodal.cli", "train", str(half), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    c = load_file(str(tmp_path / "half" / "model" / "model.safetensors"))
    assert not torch.allclose(c["visual.head.weight"], b["visual.head.weight"], atol=1e-4)
