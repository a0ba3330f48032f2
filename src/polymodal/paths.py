"""Where polymodal keeps what it builds: $POLYMODAL_HOME, else $XDG_CACHE_HOME/polymodal,
else ~/.cache/polymodal."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("POLYMODAL_HOME"):
        return Path(os.environ["POLYMODAL_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "polymodal"
