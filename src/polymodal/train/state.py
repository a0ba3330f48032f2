"""The resumable training state: one `checkpoint.pt` in the run folder, replaced
atomically, loaded with torch.load(weights_only=True) (tensors and plain data only)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from polymodal.checkpoint import fsync
from polymodal.errors import CheckpointError


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(state, tmp)
        fsync(tmp)
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, foreign pickle content
        raise CheckpointError(f"cannot resume from {path}: {str(err).splitlines()[0]} "
                              "(delete it to start over)") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a polymodal training checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
