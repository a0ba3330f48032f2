"""`manifest.json` of a store: what its vectors mean (model, dimension, metric) and how
its search index was built. Written atomically; a store with a newer format is refused."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from polymodal.checkpoint import write_text_atomic
from polymodal.errors import StoreError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclass
class Manifest:
    model_id: str
    dim: int
    model_path: str = ""  # where the model was when the store was built (a hint, not the identity)
    metric: str = "cosine"  # vectors are L2-normalised; scores are inner products
    format_version: int = FORMAT_VERSION
    created: str = ""
    # the search index: {"backend": ..., "params": {...}, "generation": store generation it covers}
    index: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        write_text_atomic(folder / MANIFEST_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{folder}: not a polymodal store (no {MANIFEST_FILE})") from None
        except (OSError, json.JSONDecodeError) as err:
            raise StoreError(f"{path}: unreadable manifest ({err})") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path}: the manifest is not a JSON object")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(f"{path}: store format {version!r} is newer than this polymodal reads "
                             f"({FORMAT_VERSION}); upgrade polymodal")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise StoreError(f"{path}: unknown manifest keys {unknown}")
        try:
            return cls(**data)
        except TypeError as err:
            raise StoreError(f"{path}: incomplete manifest ({err})") from None
