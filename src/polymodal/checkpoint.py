"""The model directory: the one artifact every command reads and writes.

    MODEL/
      config.json         format version, model id, architecture + preprocessing +
                          tokenizer settings, training summary, metrics
      model.safetensors   weights (never pickle)
      tokenizer.json      a `tokenizers` file

The model id is a short hash of the weights: stores record it, and search refuses a
query embedded by a model with another id. Directories are written under a temporary
name and renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from polymodal.config import CaptionerConfig, DualEncoderConfig, FusionModelConfig, from_dict, to_dict
from polymodal.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
ARCHITECTURE = "dual_encoder"
# config.json's "architecture" names the config class of "model"
ARCHITECTURES: dict[type, str] = {DualEncoderConfig: ARCHITECTURE, CaptionerConfig: "captioner",
                                  FusionModelConfig: "fusion"}
ModelConfig = DualEncoderConfig | CaptionerConfig | FusionModelConfig
C = TypeVar("C", DualEncoderConfig, CaptionerConfig, FusionModelConfig)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
_PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


@dataclass
class ModelCard:
    """What config.json holds besides the architecture."""

    model_id: str
    config: DualEncoderConfig
    training: dict[str, Any] = field(default_factory=dict)  # data summary, recipe, steps
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    source: str = ""  # where the weights came from (a preset, a converted checkpoint)


def model_id(state_dict: dict[str, Tensor]) -> str:
    """12 hex digits of a SHA-256 over names, dtypes, shapes and bytes of all tensors."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)  # 0-d can't be viewed
        digest.update(f"{name}|{tensor.dtype}|{tuple(state_dict[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:12]


def is_model_dir(path: str | Path) -> bool:
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return "polymodal_format" in json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False


# --------------------------------------------------------------------------- writing


def save_model_dir(
    model: nn.Module,
    config: ModelConfig,
    tokenizer_json: str,
    path: str | Path,
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    source: str = "",
    overwrite: bool = False,
) -> str:
    """Write MODEL/ atomically and return the model id."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists (pass overwrite=True to replace it)")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    # Contiguous clones: safetensors refuses shared or strided storage (tied weights).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    mid = model_id(state)
    card = {
        "polymodal_format": FORMAT_VERSION,
        "model_id": mid,
        "architecture": ARCHITECTURES[type(config)],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "model": to_dict(config),
        "training": training or {},
        "metrics": metrics or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"model_id": mid})
        (tmp / TOKENIZER_FILE).write_text(tokenizer_json)
        (tmp / CONFIG_FILE).write_text(json.dumps(card, indent=2) + "\n")
        for file in (WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE):
            fsync(tmp / file)
        fsync(tmp)
        replace_dir(tmp, path)
        fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return mid


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: a reader sees the old file or the new one,
    never half of it; a failed write leaves no temporary file behind."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk, so a rename after it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, replacing it; at no moment is `target` half-written.
    (Between the two renames `target` is briefly absent; `read_card` then points to the
    previous version, kept under a hidden .old- name.)"""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def read_card(path: str | Path) -> ModelCard:
    """Parse MODEL/config.json of a dual encoder (no weights are read)."""
    card, config = read_config(path, DualEncoderConfig)
    return ModelCard(model_id=card.get("model_id", ""), config=config,
                     training=card.get("training", {}), metrics=card.get("metrics", {}),
                     created=card.get("created", ""), source=card.get("source", ""))


def read_config(path: str | Path, expected: type[C]) -> tuple[dict[str, Any], C]:
    """MODEL/config.json as a dict, and its model config, which must be of class `expected`."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not path.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
        hint = (f"; an interrupted save left the previous version in {leftovers[0]}: rename it back"
                if leftovers else "")
        raise CheckpointError(f"{path} is not a model directory{hint}")
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}")
    try:
        card = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    version = card.get("polymodal_format")
    if version is None:
        raise CheckpointError(f"{config_file} is not a polymodal model config "
                              "(a Hugging Face CLIP directory? convert it: polymodal models convert)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {version}; this polymodal reads up to "
                              f"{FORMAT_VERSION}: upgrade polymodal")
    architecture = card.get("architecture", ARCHITECTURE)
    if architecture != ARCHITECTURES[expected]:
        wanted = ARCHITECTURES[expected].replace("_", " ")
        raise CheckpointError(f"{path} holds a {architecture!r} model, not a {wanted} model")
    try:
        config = from_dict(expected, card.get("model"), where=f"{config_file}: model")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return card, config


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Load a safetensors file; pickles and anything else are refused by name."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        pickles = [p.name for p in path.parent.glob("*") if p.name in _PICKLE_NAMES]
        hint = f" (found pickle {pickles[0]}, which polymodal does not load)" if pickles else ""
        raise CheckpointError(f"missing weights file {path}{hint}")
    try:
        return load_file(str(path))  # never unpickles
    except Exception as err:  # safetensors raises SafetensorError, a plain Exception
        failure = err
    # Only now look at the magic bytes, to say what the file is: a valid safetensors
    # header length can start with the same bytes as a pickle (0x80) or a zip ("PK").
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{path} is a pickle / torch.save file; polymodal only loads "
                              "safetensors, because unpickling can run arbitrary code")
    raise CheckpointError(f"{path} is not a valid safetensors file: {failure}")


def load_state(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load that names every missing, unexpected and mis-shaped tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        problems = [f"{label} ({len(items)}): {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                    for label, items in (("missing", missing), ("unexpected", unexpected),
                                         ("wrong shape", mismatched)) if items]
        raise CheckpointError(f"weights in {source} do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def check_model_id(state: dict[str, Tensor], card: ModelCard, source: Path) -> None:
    if card.model_id and model_id(state) != card.model_id:
        raise CheckpointError(f"{source}: weights do not match the recorded model id "
                              f"{card.model_id} (modified or corrupt file)")

