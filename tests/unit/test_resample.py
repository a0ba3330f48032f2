"""The compiled resize (_resample.c) against Pillow's own, byte for byte, at every kernel
level this CPU runs; its errors; and the transforms that use it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal import resample
from polymodal.config import AugmentConfig, PreprocessConfig
from polymodal.transforms import ImageTransform, TrainTransform

needs_kernels = pytest.mark.skipif(not resample.available(), reason="compiled resize not built")
ORDER = ["generic", "avx2", "avx512"]


def _levels() -> list[str]:
    top = resample.cpu_isa()
    return ORDER[: ORDER.index(top) + 1] if top in ORDER else []


@pytest.fixture(params=_levels() or ["none"])
def level(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "none":
        pytest.skip("compiled resize not built")
    with resample.kernels(request.param):
        yield request.param


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3))
    ramp = np.linspace(0, 255, width)[None, :, None]  # smooth parts too, where rounding is closest
    return Image.fromarray(np.where(rng.random((height, width, 1)) < 0.5, noise, ramp).astype(np.uint8))


def _pillow(image: Image.Image, size: tuple[int, int], name: str, box: resample.Box | None) -> np.ndarray:
    return np.asarray(image.resize(size, resample.FILTERS[name][1], box=box))


# Each pass first (Pillow runs the vertical pass first when the height shrinks by more than
# twice as many pixels as the width), up and down, one axis alone, fractional boxes, lines
# that are not whole vectors, 1-pixel images and boxes.
CASES = [
    ((128, 128), (64, 64), (0.0, 0.0, 128.0, 128.0)),
    ((128, 96), (64, 64), (16.0, 0.0, 112.0, 96.0)),
    ((500, 375), (224, 224), (83.0, 0.0, 416.0, 375.0)),
    ((40, 120), (36, 20), None),
    ((51, 44), (143, 18), None),
    ((90, 60), (31, 77), (3.5, 2.25, 88.75, 59.5)),
    ((33, 17), (33, 5), None),
    ((17, 33), (5, 33), None),
    ((7, 9), (40, 41), (0.5, 0.5, 6.5, 8.25)),
    ((1, 1), (3, 2), None),
    ((300, 2), (1, 1), None),
    ((20, 10), (5, 5), (5.0, 0.0, 5.0, 10.0)),  # a box of no width: Pillow samples around its edge
]


@needs_kernels
@pytest.mark.parametrize("name", list(resample.FILTERS))
@pytest.mark.parametrize(("source", "size", "box"), CASES)
def test_resize_gives_pillows_bytes(level: str, name: str, source: tuple[int, int], size: tuple[int, int],
                                    box: resample.Box | None) -> None:
    image = _image(*source, seed=sum(source))
    expected = _pillow(image, size, name, box)
    hwc = resample.resize_rgb(image, size, name, box)
    chw = resample.resize_rgb(image, size, name, box, channels_first=True)
    assert hwc.shape == (size[1], size[0], 3) and hwc.dtype == np.uint8
    np.testing.assert_array_equal(hwc, expected)
    np.testing.assert_array_equal(chw, expected.transpose(2, 0, 1))


@needs_kernels
def test_random_sizes_and_boxes_give_pillows_bytes(level: str) -> None:
    rng = np.random.default_rng(7)
    for trial in range(150):
        w, h = (int(v) for v in rng.integers(1, 160, 2))
        ow, oh = (int(v) for v in rng.integers(1, 140, 2))
        x0, y0 = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
        box = (x0, y0, float(rng.uniform(x0 + 0.01, w)), float(rng.uniform(y0 + 0.01, h)))
        name = "bicubic" if trial % 2 else "bilinear"
        image = _image(w, h, seed=trial)
        expected = _pillow(image, (ow, oh), name, box)
        np.testing.assert_array_equal(resample.resize_rgb(image, (ow, oh), name, box), expected,
                                      err_msg=f"{w}x{h} box {box} -> {ow}x{oh} {name}")


@needs_kernels
def test_the_installed_pillow_is_matched() -> None:
    assert resample.matches_pillow()


def test_pillow_serves_without_the_kernels() -> None:
    image = _image(70, 50, seed=3)
    with resample.disabled():
        out = resample.resize_rgb(image, (32, 32), "bicubic", (5.0, 0.0, 55.0, 50.0), channels_first=True)
    np.testing.assert_array_equal(out, _pillow(image, (32, 32), "bicubic", (5.0, 0.0, 55.0, 50.0)).transpose(2, 0, 1))


@needs_kernels
def test_a_pillow_the_kernels_do_not_match_is_used_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(70, 50, seed=4)
    monkeypatch.setattr(resample, "matches_pillow", lambda: False)

    def broken(*args: object) -> None:
        raise AssertionError("the kernels ran")

    monkeypatch.setattr(resample, "_module", lambda: type("M", (), {"resize": staticmethod(broken)}))
    expected = _pillow(image, (20, 30), "bilinear", None)
    np.testing.assert_array_equal(resample.resize_rgb(image, (20, 30), "bilinear"), expected)


def test_bad_arguments_are_refused() -> None:
    image = _image(20, 10, seed=5)
    with pytest.raises(ValueError, match="RGB images, not L"):
        resample.resize_rgb(image.convert("L"), (5, 5), "bicubic")
    with pytest.raises(ValueError, match="unknown filter 'lanczos'"):
        resample.resize_rgb(image, (5, 5), "lanczos")


@needs_kernels
@pytest.mark.parametrize(("box", "message"), [
    ((-1.0, 0.0, 10.0, 10.0), "box offset can't be negative"),
    ((0.0, 0.0, 21.0, 10.0), "box can't exceed original image size"),
    ((6.0, 0.0, 5.0, 10.0), "box can't be empty"),
])
def test_boxes_pillow_refuses_are_refused_alike(box: resample.Box, message: str) -> None:
    image = _image(20, 10, seed=6)
    with pytest.raises(ValueError, match=message):
        image.resize((5, 5), Image.Resampling.BICUBIC, box=box)
    with pytest.raises(ValueError, match=message):
        resample.resize_rgb(image, (5, 5), "bicubic", box)


@needs_kernels
def test_the_extension_checks_its_buffers_and_sizes() -> None:
    module = resample.module()
    src = np.zeros((10, 20, 3), np.uint8)
    full = (0.0, 0.0, 20.0, 10.0)
    with pytest.raises(ValueError, match="out must be 75 uint8 values, got 74 bytes"):
        module.resize(src, 20, 10, full, np.zeros(74, np.uint8), 5, 5, 0, False)
    with pytest.raises(ValueError, match="src must be 600 uint8 values"):
        module.resize(src[:5], 20, 10, full, np.zeros(75, np.uint8), 5, 5, 0, False)
    with pytest.raises(ValueError, match="sizes must be positive"):
        module.resize(src, 20, 10, full, np.zeros(0, np.uint8), 0, 5, 0, False)
    with pytest.raises(ValueError, match="unknown filter 7"):
        module.resize(src, 20, 10, full, np.zeros(75, np.uint8), 5, 5, 7, False)
    with pytest.raises(BufferError):
        module.resize(src, 20, 10, full, b"\0" * 75, 5, 5, 0, False)  # read-only output
    with pytest.raises(ValueError, match="unknown kernel level"):
        module.set_isa("sse9")
    with pytest.raises(ValueError, match="box values must be finite"):
        module.resize(src, 20, 10, (0.0, float("nan"), 20.0, 10.0), np.zeros(75, np.uint8), 5, 5, 0, False)


@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_eval_transform_pixels_are_the_pillow_geometry(mode: str) -> None:
    transform = ImageTransform(PreprocessConfig(image_size=24, resize_mode=mode))
    for image in (_image(61, 40, seed=8), _image(24, 24, seed=9), _image(13, 90, seed=10)):
        expected = np.asarray(transform.geometry(image)).transpose(2, 0, 1)
        np.testing.assert_array_equal(transform.pixels(image).numpy(), expected)


@pytest.mark.parametrize("augment", [AugmentConfig(scale=(0.3, 1.0), hflip=True),
                                     AugmentConfig(scale=(0.3, 1.0), hflip=True, brightness=0.2, hue=0.05)])
def test_train_transform_is_unchanged_by_the_kernels(augment: AugmentConfig) -> None:
    transform = TrainTransform(PreprocessConfig(image_size=20), augment)
    image = _image(57, 43, seed=11)
    fast = [transform(image, np.random.default_rng(seed)) for seed in range(6)]
    with resample.disabled():
        slow = [transform(image, np.random.default_rng(seed)) for seed in range(6)]
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(fast[0], fast[1])  # the augmentation still varies
