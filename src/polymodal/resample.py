"""Pillow's resize of RGB images through the compiled kernels (`_resample.c`), the same bytes.

    pixels = resize_rgb(image, (64, 64), "bicubic", box=(8.0, 0.0, 120.0, 112.0))   # (64, 64, 3) uint8
    planes = resize_rgb(image, (64, 64), "bicubic", box, channels_first=True)        # (3, 64, 64)

`Image.resize(size, resample, box)` for 8-bit RGB images and the bicubic or bilinear filter,
bit for bit, as a numpy array, several times faster. Where the extension is not built or
`POLYMODAL_NATIVE=0`, Pillow itself serves; and also where the kernels do not reproduce the
installed Pillow (they follow Pillow 13's order of passes, which older versions did not use
for every size): the first call compares the two on a few resizes of each kind and keeps
Pillow if any byte differs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from polymodal.compiled import CompiledExtension

try:
    from polymodal import _resample  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: Pillow serves
    _resample = None

#: the filters the kernels implement, by their PreprocessConfig.interpolation names
FILTERS = {"bicubic": (0, Image.Resampling.BICUBIC), "bilinear": (1, Image.Resampling.BILINEAR)}

_extension = CompiledExtension(_resample, "polymodal's compiled image resizing")
available = _extension.available  # built and not switched off
disabled = _extension.disabled  # Pillow for the duration (parity tests, reference timings)
_module = _extension.module

Box = tuple[float, float, float, float]


def resize_rgb(image: Image.Image, size: tuple[int, int], filter: str, box: Box | None = None,
               channels_first: bool = False) -> np.ndarray:
    """`image.resize(size, filter, box)` as a uint8 array: (height, width, 3), or (3, height,
    width) with `channels_first`. `image` must be RGB; `size` is (width, height)."""
    if image.mode != "RGB":
        raise ValueError(f"resize_rgb takes RGB images, not {image.mode}")
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; choose from {', '.join(FILTERS)}")
    code, pillow_filter = FILTERS[filter]
    width, height = size
    box = (0.0, 0.0, float(image.width), float(image.height)) if box is None else tuple(map(float, box))  # type: ignore[assignment]
    if not available() or not matches_pillow() or (image.size == size and box == (0, 0, *image.size)):
        out = np.asarray(image.resize(size, pillow_filter, box=box))  # Pillow copies an unchanged image as is
        return np.ascontiguousarray(out.transpose(2, 0, 1)) if channels_first else np.array(out)  # writable
    out = np.empty((3, height, width) if channels_first else (height, width, 3), dtype=np.uint8)
    _module().resize(np.asarray(image), image.width, image.height, box, out, width, height, code, channels_first)
    return out


@functools.cache
def matches_pillow() -> bool:
    """Whether the kernels give the installed Pillow's bytes on resizes of every kind (up,
    down, each pass first, a fractional box, both filters); checked once."""
    rng = np.random.default_rng(0)
    cases = [((37, 29), (64, 64), None), ((128, 96), (64, 64), (16.0, 0.0, 112.0, 96.0)),
             ((40, 120), (36, 20), None), ((90, 60), (31, 77), (3.5, 2.25, 88.75, 59.5))]
    for (w, h), size, box in cases:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for code, pillow_filter in FILTERS.values():
            out = np.empty((size[1], size[0], 3), dtype=np.uint8)
            _module().resize(np.asarray(image), w, h, box or (0.0, 0.0, float(w), float(h)), out, *size, code, False)
            if not np.array_equal(out, np.asarray(image.resize(size, pillow_filter, box=box))):
                return False
    return True


@contextmanager
def kernels(isa: str) -> Iterator[None]:
    """These row kernels ('generic', 'avx2', 'avx512') for the duration (tests)."""
    module = _module()
    before = module.isa()
    module.set_isa(isa)
    try:
        yield
    finally:
        module.set_isa(before)


isa = _extension.isa  # 'avx512', 'avx2' or 'generic' (the row kernels in use), or 'none' without the extension


def cpu_isa() -> str:
    """The fastest row kernels this CPU runs, or 'none' without the extension."""
    return str(_module().cpu_isa()) if _resample is not None else "none"


def module() -> Any:
    """The extension (tests call it with bad arguments)."""
    return _module()
