"""Test images made with Pillow from the photo set: every mode, EXIF rotations, broken files and bombs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.hostile_media import png_bomb  # noqa: F401 (one generator for the decoder tests and the corpus)
from bench.photo_set import face_photo

EXIF_ORIENTATION = 0x0112


def face_image() -> Image.Image:
    with Image.open(io.BytesIO(face_photo())) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def in_mode(image: Image.Image, mode: str) -> tuple[bytes, str]:
    """``image`` re-encoded so that Pillow opens it in ``mode``; returns the bytes and the file format."""
    if mode == "L":
        return encode(image.convert("L"), "PNG"), "PNG"
    if mode == "P":
        return encode(image.quantize(256), "PNG"), "PNG"
    if mode == "P-transparent":
        # A GIF whose palette index 0 is transparent: the decoder must composite, not show index 0's colour.
        return encode(image.quantize(255), "GIF", transparency=0), "GIF"
    if mode == "RGBA":
        rgba = image.convert("RGBA")
        alpha = np.full((image.height, image.width), 255, np.uint8)
        alpha[:, : image.width // 6] = 0  # a transparent band at the left, away from the face
        rgba.putalpha(Image.fromarray(alpha, "L"))
        return encode(rgba, "PNG"), "PNG"
    if mode == "LA":
        return encode(image.convert("LA"), "PNG"), "PNG"
    if mode == "CMYK":
        return encode(image.convert("CMYK"), "JPEG", quality=92), "JPEG"
    if mode == "I;16":
        wide = np.asarray(image.convert("L")).astype(np.uint16) * 257  # full 16-bit range
        return encode(Image.fromarray(wide), "PNG"), "PNG"
    if mode == "WEBP":
        return encode(image, "WEBP", quality=90), "WEBP"
    if mode == "progressive":
        return encode(image, "JPEG", quality=90, progressive=True), "JPEG"
    if mode == "BMP":
        return encode(image, "BMP"), "BMP"
    raise ValueError(mode)


# Pillow transpose that *stores* an upright picture so that a viewer applying EXIF ``orientation`` shows it upright.
_STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def exif_rotated_jpeg(image: Image.Image, orientation: int) -> bytes:
    """The JPEG a phone writes when held sideways: pixels stored rotated, the Orientation tag says how to undo it."""
    stored = image.transpose(_STORE_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = encode(face_image(), "JPEG", quality=90)
    return data[: len(data) // 2]


# Every image mode/format a phone or chat app may send, as (mode, format) for the generators above;
# the decoder's tests and the service's tests both walk this list.
IMAGE_MODES: list[tuple[str, str]] = [
        ("L", "PNG"),
        ("P", "PNG"),
        ("P-transparent", "GIF"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("WEBP", "WEBP"),
        ("progressive", "JPEG"),
]
