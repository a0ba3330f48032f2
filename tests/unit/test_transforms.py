import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.config import OPENAI_MEAN, OPENAI_STD, AugmentConfig, PreprocessConfig
from polymodal.errors import ImageDecodeError
from polymodal.transforms import (
    ImageTransform,
    TrainTransform,
    load_image,
    random_resized_crop_box,
    to_rgb,
)


def _png_bytes(image: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _unnormalize(t: torch.Tensor, cfg: PreprocessConfig) -> np.ndarray:
    mean = torch.tensor(cfg.mean)[:, None, None]
    std = torch.tensor(cfg.std)[:, None, None]
    return ((t * std + mean) * 255).round().permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- modes


def test_transparent_pixels_become_the_background() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    rgb = to_rgb(rgba)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (0, 0, 255)
    assert to_rgb(rgba, background=(0, 0, 0)).getpixel((1, 1)) == (0, 0, 0)


def test_half_transparent_pixels_are_blended() -> None:
    rgba = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    value = to_rgb(rgba).getpixel((0, 0))[0]
    assert 120 <= value <= 135  # halfway between black and the white background


def test_palette_with_transparency_is_composited() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # palette index 0 (red) is transparent
    loaded = load_image(_png_bytes(palette, transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (0, 255, 0)


@pytest.mark.parametrize(("mode", "value", "expected"), [
    ("L", 77, (77, 77, 77)),
    ("1", 1, (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
])
def test_modes_convert_to_rgb(mode: str, value: object, expected: tuple[int, int, int]) -> None:
    assert to_rgb(Image.new(mode, (2, 2), value)).getpixel((0, 0)) == expected  # type: ignore[arg-type]


def test_transparent_colour_keys_of_gray_and_rgb_pngs_are_composited() -> None:
    for mode, key, other in (("L", 0, 200), ("RGB", (0, 0, 0), (200, 10, 10))):
        image = Image.new(mode, (2, 1), key)  # type: ignore[arg-type]
        image.putpixel((1, 0), other)  # type: ignore[arg-type]
        loaded = load_image(_png_bytes(image, transparency=key))
        assert loaded.getpixel((0, 0)) == (255, 255, 255), mode  # the keyed colour is transparent
        assert loaded.getpixel((1, 0)) != (255, 255, 255), mode


def test_dark_16_bit_images_stay_dark() -> None:
    data = np.full((2, 2), 200, dtype=np.uint16)  # 200 / 65535: nearly black
    decoded = load_image(_png_bytes(Image.fromarray(data)))
    assert decoded.getpixel((0, 0)) == (1, 1, 1)


def test_16_bit_grayscale_is_scaled_to_8_bits() -> None:
    data = np.array([[0, 65535], [257 * 100, 1000]], dtype=np.uint16)
    image = Image.fromarray(data)  # mode I;16
    assert image.mode.startswith("I;16")
    decoded = load_image(_png_bytes(image))
    assert [decoded.getpixel(p)[0] for p in ((0, 0), (1, 0), (0, 1))] == [0, 255, 100]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 5, 10))  # blue stripe on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (10, 30)
    r, g, b = loaded.getpixel((5, 2))  # the left stripe is now at the top
    assert b > 200 and r < 60


# --------------------------------------------------------------------------- bad input


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    good = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    for path, reason in ((empty, "not a readable image"), (text, "not a readable image"),
                         (truncated, "corrupt or truncated"), (tmp_path / "missing.png", "no such file")):
        with pytest.raises(ImageDecodeError, match=reason) as info:
            load_image(path)
        assert path.name in str(info.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries no image data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_images_beyond_pillows_own_bomb_limit_are_an_image_error() -> None:
    with pytest.raises(ImageDecodeError, match="too many pixels|exceed the limit"):
        load_image(_png_header_only(14000, 14000), max_pixels=None)
    with pytest.raises(ImageDecodeError, match="exceed the limit"):
        load_image(_png_header_only(5000, 5000), max_pixels=1000 * 1000)


def test_decompression_bombs_are_refused_before_decoding() -> None:
    data = _png_bytes(Image.new("L", (300, 300)))
    with pytest.raises(ImageDecodeError, match="exceed the limit"):
        load_image(data, max_pixels=300 * 299)
    assert load_image(data, max_pixels=300 * 300).size == (300, 300)


# --------------------------------------------------------------------------- geometry


def test_opened_pillow_images_are_treated_like_paths(tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 5, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    transform = ImageTransform(PreprocessConfig(image_size=8))
    torch.testing.assert_close(transform(Image.open(path)), transform(path))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    noise.save(tmp_path / "noise.jpg", quality=90)
    data = (tmp_path / "noise.jpg").read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) // 2])  # header intact: opens lazily, fails to decode
    with pytest.raises(ImageDecodeError):
        transform(Image.open(truncated))


def test_extreme_aspect_ratios_are_cropped_without_a_huge_intermediate() -> None:
    strip = Image.new("RGB", (3000, 1), (10, 200, 30))
    out = ImageTransform(PreprocessConfig(image_size=224))(strip)
    pixels = _unnormalize(out, PreprocessConfig(image_size=224))
    assert out.shape == (3, 224, 224) and abs(pixels[..., 1].mean() - 200) < 2


def test_eval_transform_resizes_shortest_side_and_centre_crops() -> None:
    cfg = PreprocessConfig(image_size=8)
    # 32x16 image: left half black, right half white; resized to 16x8, crop keeps the middle.
    image = Image.new("RGB", (32, 16), (0, 0, 0))
    image.paste((255, 255, 255), (16, 0, 32, 16))
    out = ImageTransform(cfg)(image)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    pixels = _unnormalize(out, cfg)
    assert pixels[:, :3].max() <= 5 and pixels[:, 5:].min() >= 250  # edge stays centred


def test_normalisation_uses_the_configured_mean_and_std() -> None:
    cfg = PreprocessConfig(image_size=4)
    out = ImageTransform(cfg)(Image.new("RGB", (4, 4), (255, 0, 128)))
    expected = (np.array([1.0, 0.0, 128 / 255]) - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("cfg", [PreprocessConfig(image_size=24),
                                 PreprocessConfig(image_size=16, resize_size=20, mean=(0.2, 0.5, 0.9),
                                                  std=(0.1, 0.3, 0.7))])
def test_bytes_normalised_in_a_batch_equal_the_per_image_transform(noise_image: Image.Image,
                                                                    cfg: PreprocessConfig) -> None:
    # Bulk embedding moves uint8 crops and normalises whole batches: the same bits as one
    # image at a time, or indexed vectors would drift from query vectors.
    transform = ImageTransform(cfg)
    images = [noise_image, noise_image.rotate(90, expand=True), noise_image.convert("L").convert("RGB")]
    crops = torch.stack([transform.pixels(load_image(image)) for image in images])
    assert crops.dtype == torch.uint8 and crops.shape == (3, 3, cfg.image_size, cfg.image_size)
    assert torch.equal(transform.normalise(crops), torch.stack([transform(image) for image in images]))


def test_resize_size_crops_a_smaller_centre() -> None:
    image = Image.new("RGB", (16, 16), (0, 0, 0))
    image.paste((255, 255, 255), (4, 4, 12, 12))  # white centre square
    plain_cfg = PreprocessConfig(image_size=8)
    plain = _unnormalize(ImageTransform(plain_cfg)(image), plain_cfg)
    cfg = PreprocessConfig(image_size=8, resize_size=16)
    zoomed = _unnormalize(ImageTransform(cfg)(image), cfg)
    assert zoomed.min() >= 250  # only the white centre remains
    assert plain.min() <= 5


def test_squash_ignores_aspect_ratio() -> None:
    cfg = PreprocessConfig(image_size=8, resize_mode="squash")
    image = Image.new("RGB", (32, 8), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 4, 8))  # narrow white stripe at the far left
    pixels = _unnormalize(ImageTransform(cfg)(image), cfg)
    assert pixels[:, 0].min() >= 200  # still present: nothing was cropped away


def test_matches_transformers_clip_image_processor(noise_image: Image.Image) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # 60x40 -> shortest side 32 -> 48x32 -> centre crop 32x32 (even margins, same offsets).
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ours = ImageTransform(PreprocessConfig(image_size=32))(noise_image)
    theirs = processor(images=noise_image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- augmentation


def test_random_crop_boxes_stay_inside_and_follow_scale(rng: np.random.Generator) -> None:
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(60, 40, (0.3, 0.5), (0.75, 1.333), rng)
        assert 0 <= left and 0 <= top and left + w <= 60 and top + h <= 40
        assert 0.25 <= w * h / 2400 <= 0.56  # rounding of the sides widens the range a little


def test_impossible_ratio_falls_back_to_a_centre_crop(rng: np.random.Generator) -> None:
    assert random_resized_crop_box(100, 10, (0.99, 1.0), (1.0, 1.0), rng) == (45, 0, 10, 10)


def test_train_transform_is_reproducible_per_seed(noise_image: Image.Image) -> None:
    cfg = PreprocessConfig(image_size=16)
    aug = AugmentConfig(scale=(0.2, 0.6), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    t = TrainTransform(cfg, aug)
    a = t(noise_image, np.random.default_rng(5))
    b = t(noise_image, np.random.default_rng(5))
    c = t(noise_image, np.random.default_rng(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_flip_happens_only_when_allowed() -> None:
    image = Image.new("RGB", (16, 16), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 16))  # white left half
    cfg = PreprocessConfig(image_size=16)
    full = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0))

    def left_is_white(t: torch.Tensor) -> bool:
        return bool(_unnormalize(t, cfg)[:, :4].min() > 200)

    no_flip = TrainTransform(cfg, full)
    assert all(left_is_white(no_flip(image, np.random.default_rng(s))) for s in range(20))
    flip = TrainTransform(cfg, AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=True))
    results = [left_is_white(flip(image, np.random.default_rng(s))) for s in range(20)]
    assert any(results) and not all(results)


def test_hue_jitter_rotates_colours() -> None:
    cfg = PreprocessConfig(image_size=8)
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    aug = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hue=0.5)
    pixels = [_unnormalize(TrainTransform(cfg, aug)(red, np.random.default_rng(s)), cfg)[0, 0]
              for s in range(10)]
    assert any(p[1] > 100 or p[2] > 100 for p in pixels)  # some draws turned red to another hue
