"""decode_image: formats by content, EXIF orientation, every pixel mode, JPEG draft, and refusals."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tests.vision_service.images import (
    IMAGE_MODES,
    encode,
    exif_rotated_jpeg,
    face_image,
    in_mode,
    png_bomb,
    truncated_jpeg,
)
from vision_service.decode import decode_image
from vision_service.errors import ImageTooLarge, InvalidImage

LIMITS = {"max_bytes": 16 * 1024 * 1024, "max_pixels": 50_000_000}


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [*IMAGE_MODES, ("BMP", "BMP")],
)
def test_every_mode_becomes_the_same_rgb_picture(mode: str, fmt: str) -> None:
    original = face_image()
    data, _ = in_mode(original, mode)
    decoded = decode_image(data, **LIMITS)
    assert decoded.format == fmt
    assert decoded.pixels.mode == "RGB"
    assert (decoded.width, decoded.height) == original.size == decoded.pixels.size
    reference = original.convert("L").convert("RGB") if mode in ("L", "LA", "I;16") else original
    if mode == "RGBA":
        band = original.width // 6
        # The transparent band is composited on white; the rest is the photo.
        assert np.asarray(decoded.pixels)[:, :band].min() == 255
        reference = reference.crop((band, 0, original.width, original.height))
        decoded_part = decoded.pixels.crop((band, 0, original.width, original.height))
    else:
        decoded_part = decoded.pixels
    # Lossy formats and palettes differ a little; a wrong conversion (clipped 16-bit, inverted CMYK) differs a lot.
    assert mean_abs_diff(decoded_part, reference) < 12


def test_16_bit_png_keeps_its_contrast() -> None:
    """Pillow's own I;16 -> L conversion clips at 255, which would turn a 16-bit photo almost white."""
    data, _ = in_mode(face_image(), "I;16")
    pixels = np.asarray(decode_image(data, **LIMITS).pixels)
    assert pixels.min() < 30 and pixels.max() > 200 and 60 < pixels.mean() < 200


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = face_image()
    decoded = decode_image(exif_rotated_jpeg(upright, orientation), **LIMITS)
    assert (decoded.width, decoded.height) == upright.size
    assert decoded.pixels.size == upright.size
    assert mean_abs_diff(decoded.pixels, upright) < 6


def test_format_comes_from_the_content_not_the_name() -> None:
    data = encode(face_image(), "PNG")
    assert decode_image(data, **LIMITS).format == "PNG"


def test_large_jpeg_is_decoded_at_reduced_scale_but_reports_its_full_size() -> None:
    big = face_image().resize((4096, 4800))
    rotated = exif_rotated_jpeg(big, 6)
    decoded = decode_image(rotated, **LIMITS, fit=300)
    assert (decoded.width, decoded.height) == (4096, 4800)
    # 1/8 scale still covers the 300 px canvas: 512 x 600, upright.
    assert decoded.pixels.size == (512, 600)
    assert mean_abs_diff(decoded.pixels, big.resize((512, 600), Image.Resampling.BOX)) < 6


def test_jpeg_scale_is_the_smallest_that_still_covers_the_canvas() -> None:
    data = encode(face_image(), "JPEG")  # 512 x 600
    assert decode_image(data, **LIMITS, fit=300).pixels.size == (256, 300)  # 1/2 exactly covers 300
    assert decode_image(data, **LIMITS, fit=400).pixels.size == (512, 600)  # 1/2 would be too small
    assert decode_image(data, **LIMITS, fit=600).pixels.size == (512, 600)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is not a picture\n" * 10, b"%PDF-1.4\n%...", truncated_jpeg()],
    ids=["empty", "text", "pdf", "truncated-jpeg"],
)
def test_non_images_and_broken_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data, **LIMITS)


def test_formats_outside_the_allowlist_are_refused() -> None:
    # EPS would make Pillow run Ghostscript; TIFF and ICO are simply not what WhatsApp sends.
    for fmt in ("TIFF", "ICO", "PPM"):
        with pytest.raises(InvalidImage, match="supported format"):
            decode_image(encode(face_image().resize((64, 64)), fmt), **LIMITS)


def test_byte_cap_is_checked_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(encode(face_image(), "PNG"), max_bytes=1000, max_pixels=LIMITS["max_pixels"])


def test_png_bomb_is_refused_from_its_header_without_allocating_it() -> None:
    bomb = png_bomb()
    assert len(bomb) < 200_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge, match="pixels"):
            decode_image(bomb, **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Not a timing test: a full decode would take seconds and 900 MB; this only guards against doing it at all.
    assert time.perf_counter() - started < 1.0
    assert peak < 10 * 1024 * 1024


def test_pixel_cap_applies_below_pillows_own_limit() -> None:
    data = encode(Image.new("RGB", (2000, 1000)), "PNG")
    with pytest.raises(ImageTooLarge, match="2000x1000"):
        decode_image(data, max_bytes=LIMITS["max_bytes"], max_pixels=1_999_999)
    assert decode_image(data, max_bytes=LIMITS["max_bytes"], max_pixels=2_000_000).width == 2000


def test_pixel_cap_counts_the_stored_size_of_a_rotated_jpeg() -> None:
    data = exif_rotated_jpeg(Image.new("RGB", (300, 100)), 6)
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_bytes=LIMITS["max_bytes"], max_pixels=29_999)
    decoded = decode_image(data, max_bytes=LIMITS["max_bytes"], max_pixels=30_000)
    assert (decoded.width, decoded.height) == (300, 100)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [face_image(), Image.new("RGB", face_image().size, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data, **LIMITS)
    assert mean_abs_diff(decoded.pixels, frames[0]) < 20
