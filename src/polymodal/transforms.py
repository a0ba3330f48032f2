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

ImageSource = str | Path | bytes | Image.Image

# Larger images are refused before decoding (decompression bombs): 16k x 16k pixels.
DEFAULT_MAX_PIXELS = 16384 * 16384

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


# --------------------------------------------------------------------------- decoding


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Decode an image fully and return it as RGB, EXIF orientation applied.

    Raises ImageDecodeError naming the source for empty, truncated, corrupt, non-image
    or over-large (`max_pixels`) inputs.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(getattr(source, "filename", "") or source)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except FileNotFoundError:
            raise ImageDecodeError(f"{name}: no such file") from None
        except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is OSError
            raise ImageDecodeError(f"{name}: not a readable image ({_reason(err)})") from None
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(f"{name}: {width}x{height} pixels exceed the limit of {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check size above
            image.load()  # decode now, so truncation is found here and not mid-batch
            return to_rgb(ImageOps.exif_transpose(image), background)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    return str(err).split("\n")[0] or type(err).__name__


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: transparency composited on `background`, palette,
    grayscale and CMYK converted, 16- and 32-bit data scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit int / float) grayscale data to 8 bits."""
    data = array.astype(np.float64)
    if array.dtype.kind == "f":  # float images: [0, 1] if they fit, else clip to [0, 255]
        data = data * 255.0 if data.max(initial=0.0) <= 1.0 else data
    elif data.max(initial=0) > 255:  # 16-bit samples, as Pillow opens 16-bit PNG/TIFF
        data = data / 257.0  # 65535 -> 255
    return np.clip(np.rint(data), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- geometry


def resize_shortest(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scale so the shortest side is `size`; the long side is truncated as torchvision's
    Resize(int) does (OpenAI CLIP's preprocessing)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_size = (size, new_long) if w <= h else (new_long, size)
    return image if new_size == image.size else image.resize(new_size, resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Central size x size crop (offsets rounded as torchvision's CenterCrop)."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


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
        self._mean = np.asarray(cfg.mean, dtype=np.float32)
        self._std = np.asarray(cfg.std, dtype=np.float32)

    def __call__(self, image: ImageSource) -> Tensor:
        return self.to_tensor(self.geometry(self._rgb(image)))

    def batch(self, images: Sequence[ImageSource]) -> Tensor:
        """(B, 3, S, S) for a list of images."""
        return torch.stack([self(image) for image in images])

    def geometry(self, image: Image.Image) -> Image.Image:
        size = self.cfg.image_size
        if self.cfg.resize_mode == "squash":
            return image if image.size == (size, size) else image.resize((size, size), self.resample)
        resize = self.cfg.resize_size or size
        return center_crop(resize_shortest(image, resize, self.resample), size)

    def to_tensor(self, image: Image.Image) -> Tensor:
        array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        array = (array - self._mean) / self._std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def _rgb(self, image: ImageSource) -> Image.Image:
        if isinstance(image, Image.Image) and image.mode == "RGB":
            return image
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
        image = image.resize((size, size), self.resample, box=(left, top, left + cw, top + ch))
        if aug.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.to_tensor(color_jitter(image, aug, rng))


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
