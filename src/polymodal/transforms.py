"""Image preprocessing with Pillow + numpy + torch (no torchvision).

    image = load_image(path)                 # decoded, EXIF-rotated, RGB, or ImageDecodeError
    pixels = ImageTransform(preprocess)(image)                   # (3, S, S) float32
    pixels = TrainTransform(preprocess, augment)(image, rng)     # with augmentation

Evaluation follows OpenAI CLIP's preprocessing: resize the shortest side to S with
bicubic filtering, centre-crop S x S, scale to [0, 1], normalise by mean/std.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor

from polymodal.config import AugmentConfig, PreprocessConfig
from polymodal.errors import ImageDecodeError
from polymodal.resample import resize_rgb

ImageSource = str | Path | bytes | Image.Image

# Larger images are refused before decoding (decompression bombs). Pillow refuses more
# than twice its MAX_IMAGE_PIXELS (~179 million) on its own; that is our default too.
DEFAULT_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


# --------------------------------------------------------------------------- decoding


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               background: tuple[int, int, int] = (255, 255, 255), name: str | None = None) -> Image.Image:
    """Decode an image fully and return it as 8-bit RGB, EXIF orientation applied.

    Accepts a path, encoded bytes or a Pillow image (opened lazily or not). Raises
    ImageDecodeError naming the source for empty, truncated, corrupt, non-image or
    over-large (`max_pixels`, and Pillow's own decompression-bomb limit) inputs;
    `name` overrides how the source is named in those errors.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes) else str(getattr(source, "filename", "") or source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check sizes ourselves
        if isinstance(source, Image.Image):
            image = source
        else:
            try:
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            except FileNotFoundError:
                raise ImageDecodeError(f"{name}: no such file") from None
            except Image.DecompressionBombError as err:
                raise ImageDecodeError(f"{name}: too many pixels ({_reason(err)})") from None
            except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is OSError
                raise ImageDecodeError(f"{name}: not a readable image ({_reason(err)})") from None
        width, height = image.size
        if width == 0 or height == 0:
            raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
        if max_pixels is not None and width * height > max_pixels:
            raise ImageDecodeError(f"{name}: {width}x{height} pixels exceed the limit of {max_pixels}")
        try:
            image.load()  # decode now, so truncation is found here and not mid-batch
            rgb = to_rgb(ImageOps.exif_transpose(image), background)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise ImageDecodeError(f"{name}: corrupt or truncated image ({_reason(err)})") from None
    if getattr(image, "n_frames", 1) > 1 and image is not source:
        # Multi-frame files (GIF, TIFF) keep their file open for seeking; we use frame 0.
        rgb = rgb.copy() if rgb is image else rgb
        image.close()
    return rgb


def _reason(err: Exception) -> str:
    return str(err).split("\n")[0] or type(err).__name__


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: transparency (alpha channels, palette and tRNS
    colour keys) composited on `background`; palette, grayscale and CMYK converted;
    16-bit, 32-bit and float samples scaled to 8 bits by their mode's range."""
    if image.mode in _HIGH_BIT_MODES:
        image = Image.fromarray(_to_uint8(np.asarray(image), image.mode), mode="L")
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")  # a transparent colour key becomes an alpha channel
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV
    return image


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grayscale to 8 bits, scaled by the mode's range, not the data's
    (a dark 16-bit image stays dark). "I" is how Pillow opens 16-bit PNG and TIFF data;
    float ("F") images are taken to be in [0, 1]."""
    data = array.astype(np.float64)
    data = data * 255.0 if mode == "F" else data / 257.0  # 65535 -> 255
    return np.clip(np.rint(data), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- geometry


def center_crop_box(width: int, height: int, resize: int, crop: int) -> tuple[float, float, float, float]:
    """The source region that "resize the shortest side to `resize`, then take the
    central crop x crop" keeps, as torchvision's Resize(int) + CenterCrop compute it
    (OpenAI CLIP's preprocessing: the long side truncated, crop offsets rounded).

    Resampling only this box straight to crop x crop gives the same pixels without
    materialising the resized image, which for a 3000x1 strip would be 672000x224."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))
    sx, sy = width / new_w, height / new_h
    return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float],
                            ratio: tuple[float, float], rng: np.random.Generator
                            ) -> tuple[int, int, int, int]:
    """(left, top, crop_width, crop_height) of an Inception-style random crop (Szegedy
    et al. 2015): area fraction in `scale`, aspect ratio log-uniform in `ratio`; falls
    back to a centre crop after 10 rejected draws, as torchvision does."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= width and 0 < ch <= height:
            return int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1)), cw, ch
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(height * ratio[1])), height
    else:
        cw, ch = width, height
    return (width - cw) // 2, (height - ch) // 2, cw, ch


# --------------------------------------------------------------------------- transforms


class ImageTransform:
    """Evaluation preprocessing: image -> (3, S, S) float32 normalised tensor."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.resample = _RESAMPLE[cfg.interpolation]
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: ImageSource) -> Tensor:
        return self.normalise(self.pixels(self._rgb(image)))

    def pixels(self, rgb: Image.Image) -> Tensor:
        """(3, S, S) uint8 of an image `load_image` returned: cropped and resized, not yet
        normalised. Bulk embedding passes these (a quarter of the float tensor's bytes)
        from its decoding workers and normalises whole batches with `normalise`. The same
        bytes as `geometry`, through the compiled resize where it is built."""
        size = self.cfg.image_size
        return torch.from_numpy(resize_rgb(rgb, (size, size), self.cfg.interpolation, self._crop_box(rgb),
                                           channels_first=True))

    def normalise(self, pixels: Tensor) -> Tensor:
        """(..., 3, S, S) uint8 -> float32 in [0, 1], less the mean, over the std: the one
        normalisation, so a batch gives the same bits as its images one at a time."""
        return pixels.float().div_(255.0).sub_(self._mean).div_(self._std)

    def batch(self, images: Sequence[ImageSource]) -> Tensor:
        """(B, 3, S, S) for a list of images."""
        return torch.stack([self(image) for image in images])

    def geometry(self, image: Image.Image) -> Image.Image:
        """The resized and cropped image, as a Pillow image (what `pixels` holds as an array)."""
        size = self.cfg.image_size
        if self.cfg.resize_mode == "squash" and image.size == (size, size):
            return image
        return image.resize((size, size), self.resample, box=self._crop_box(image))

    def _crop_box(self, image: Image.Image) -> tuple[float, float, float, float] | None:
        """The source region resized to S x S: the centre crop, or None (all of it) when squashing."""
        if self.cfg.resize_mode == "squash":
            return None
        return center_crop_box(*image.size, self.cfg.resize_size or self.cfg.image_size, self.cfg.image_size)

    def _rgb(self, image: ImageSource) -> Image.Image:
        # Also for Pillow images: EXIF rotation, lazy decoding errors and modes are
        # handled the same way whether the caller passed a path or an opened image.
        return load_image(image, background=self.cfg.background)


class TrainTransform(ImageTransform):
    """Training preprocessing: random resized crop, optional horizontal flip, colour
    jitter, then normalisation. Pass `rng` per sample for reproducible augmentation."""

    def __init__(self, cfg: PreprocessConfig, augment: AugmentConfig, seed: int = 0) -> None:
        super().__init__(cfg)
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: ImageSource, rng: np.random.Generator | None = None) -> Tensor:
        rng = self.rng if rng is None else rng
        image = self._rgb(image)
        aug, size = self.augment, self.cfg.image_size
        left, top, cw, ch = random_resized_crop_box(*image.size, aug.scale, aug.ratio, rng)
        pixels = resize_rgb(image, (size, size), self.cfg.interpolation, (left, top, left + cw, top + ch))
        if aug.hflip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if aug.brightness or aug.contrast or aug.saturation or aug.hue:
            pixels = np.asarray(color_jitter(Image.fromarray(np.ascontiguousarray(pixels)), aug, rng))
        return self.normalise(torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))))


def color_jitter(image: Image.Image, aug: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation (factors in [1-s, 1+s]) and hue (shift in
    [-h, h] of the hue circle), each skipped when its strength is 0."""
    for strength, enhancer in ((aug.brightness, ImageEnhance.Brightness),
                               (aug.contrast, ImageEnhance.Contrast),
                               (aug.saturation, ImageEnhance.Color)):
        if strength > 0:
            image = enhancer(image).enhance(rng.uniform(max(0.0, 1 - strength), 1 + strength))
    if aug.hue > 0:
        shift = int(round(rng.uniform(-aug.hue, aug.hue) * 255))
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
        image = Image.fromarray(hsv, mode="HSV").convert("RGB")
    return image
