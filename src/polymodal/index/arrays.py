"""Saving and loading the numpy arrays of an index folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polymodal.checkpoint import fsync
from polymodal.errors import StoreError


def save_arrays(folder: Path, **arrays: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with open(folder / f"{name}.npy", "wb") as f:
            np.save(f, array)
            f.flush()
    fsync(folder)


def load_arrays(folder: Path, *names: str) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        path = folder / f"{name}.npy"
        try:
            out[name] = np.load(path)
        except (OSError, ValueError) as err:
            raise StoreError(f"{path}: unreadable index file ({err}); run `polymodal index build`") from None
    return out
