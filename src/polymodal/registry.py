"""Named model presets: the JSON files in `model_configs/` (data, not code)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from polymodal.config import DualEncoderConfig, from_dict
from polymodal.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "model_configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def preset_dict(name: str) -> dict[str, Any]:
    """The raw JSON of preset `name`, or of a JSON file path."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        source = path
    elif (PRESET_DIR / f"{name}.json").is_file():
        source = PRESET_DIR / f"{name}.json"
    else:
        close = difflib.get_close_matches(name, list_presets(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model preset {name!r}{hint} (presets: {', '.join(list_presets())})")
    try:
        data = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a JSON object")
    return data


def get_preset(name: str) -> DualEncoderConfig:
    return from_dict(DualEncoderConfig, preset_dict(name), where=name)
