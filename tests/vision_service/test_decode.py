"""decode_image: formats by content, EXIF orientation, every pixel mode, JPEG draft, and refusals."""

from __future__ import annotations

import io
import threading
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
from vision_service.decode import DecodeMemory, decode_image
from vision_service.errors import DecoderBusy, ImageTooLarge, InvalidImage

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


# --- bounded memory: what a decode will hold is worked out from the header and reserved before decoding ---


def _memory(mib: int) -> DecodeMemory:
    return DecodeMemory(mib * 1024 * 1024)


def test_transparent_lossless_webp_that_would_need_800_mb_is_refused_before_decoding() -> None:
    # 1,968 bytes on disk; libwebp and Pillow would hold about 16 bytes per pixel of its 7071 x 7071.
    data = encode(Image.new("RGBA", (7071, 7071), (0, 0, 0, 0)), "WEBP", lossless=True)
    assert len(data) < 4000
    with pytest.raises(ImageTooLarge, match=r"7071x7071 WEBP needs about 763 MiB"):
        decode_image(data, **LIMITS, fit=300, memory=_memory(200))


def test_progressive_jpeg_counts_libjpegs_whole_image_coefficient_buffer() -> None:
    picture = face_image().resize((2000, 2000))
    baseline = encode(picture, "JPEG", quality=80)
    progressive = encode(picture, "JPEG", quality=80, progressive=True, subsampling=0)
    # 4 MP x 3 components x 2 bytes of coefficients (23 MiB) does not fit in 16 MiB, even decoded at 1/4 ...
    with pytest.raises(ImageTooLarge, match="needs about 24 MiB"):
        decode_image(progressive, **LIMITS, fit=300, memory=_memory(16))
    # ... while the baseline file decodes row by row at 1/4 scale in a few hundred KB.
    assert decode_image(baseline, **LIMITS, fit=300, memory=_memory(1)).pixels.size == (500, 500)


def test_cmyk_jpeg_at_the_pixel_cap_decodes_scaled_down() -> None:
    data = encode(Image.new("CMYK", (7071, 7071), (0, 200, 200, 0)), "JPEG", quality=80)
    decoded = decode_image(data, max_bytes=LIMITS["max_bytes"], max_pixels=7071 * 7071, fit=300, memory=_memory(8))
    assert (decoded.width, decoded.height) == (7071, 7071)
    assert decoded.pixels.size == (884, 884)  # 1/8 scale
    assert decoded.pixels.mode == "RGB"
    red, green, blue = np.asarray(decoded.pixels).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 100 and blue < 100  # no magenta+yellow inverted into blue-green


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "P-transparent", "LA"])
def test_full_size_formats_are_shrunk_as_they_are_converted(mode: str) -> None:
    original = face_image().resize((2048, 2400))
    data, _ = in_mode(original, mode)
    decoded = decode_image(data, **LIMITS, fit=300)
    assert (decoded.width, decoded.height) == (2048, 2400)
    # Shrunk by a whole factor (here 8) that still covers the canvas, box-filtered like JPEG's 1/8 decode.
    assert decoded.pixels.size == (256, 300)
    reference = original.resize((256, 300), Image.Resampling.BOX)
    if mode in ("I;16", "LA"):
        reference = reference.convert("L").convert("RGB")
    if mode == "RGBA":
        assert np.asarray(decoded.pixels)[:, : 256 // 6].min() == 255  # the transparent band, on white
        reference, decoded_part = reference.crop((256 // 6 + 1, 0, 256, 300)), decoded.pixels.crop((256 // 6 + 1, 0, 256, 300))
    else:
        decoded_part = decoded.pixels
    assert mean_abs_diff(decoded_part, reference) < 12


def test_a_16_bit_png_at_full_size_needs_two_bytes_per_pixel_and_no_more() -> None:
    wide = (np.arange(3000 * 3000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3000, 3000)
    data = encode(Image.fromarray(wide), "PNG")
    # 18 MB of I;16 pixels: refused under 16 MiB, decoded (to 300 x 300) within 18 MiB.
    with pytest.raises(ImageTooLarge, match="needs about 18 MiB"):
        decode_image(data, **LIMITS, fit=300, memory=_memory(16))
    assert decode_image(data, **LIMITS, fit=300, memory=_memory(18)).pixels.size == (300, 300)


def test_apng_and_animated_webp_use_their_first_frame() -> None:
    first = face_image()
    frames = [first.convert("RGBA"), Image.new("RGBA", first.size, (0, 255, 0, 255))]
    for fmt, options in (("PNG", {}), ("WEBP", {"lossless": True})):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.n_frames == 2
        decoded = decode_image(data, **LIMITS, fit=300)
        assert decoded.format == fmt
        assert mean_abs_diff(decoded.pixels, first.resize(decoded.pixels.size, Image.Resampling.BOX)) < 12


def test_a_photo_waits_for_decode_memory_then_is_refused_as_busy() -> None:
    memory = _memory(10)
    data = encode(face_image().convert("RGBA"), "PNG")  # 512 x 600 x 4 bytes: 1.2 MB
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with memory.reserve(9 * 1024 * 1024, deadline=time.monotonic() + 1, what="another photo"):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        with pytest.raises(DecoderBusy, match="retried later"):
            decode_image(data, **LIMITS, deadline=time.monotonic() + 0.2, memory=memory)
        # Room given back while it waits: the photo decodes.
        threading.Timer(0.2, release.set).start()
        assert decode_image(data, **LIMITS, deadline=time.monotonic() + 5, memory=memory).width == 512
    finally:
        release.set()
        holder.join()
    assert memory.used == 0
