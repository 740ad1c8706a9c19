"""Photo bytes -> one upright RGB picture, with Pillow, refusing bombs before decoding their pixels.

Pure: no I/O, no global state changed. server.py sets ``Image.MAX_IMAGE_PIXELS`` once as Pillow's own
backstop; the explicit header check here is what gives a clean ``ImageTooLarge`` for any limit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import (  # Registering exactly the accepted formats' plugins (Image.open(formats=...) needs them loaded).
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from vision_service.errors import ImageTooLarge, InvalidImage

# What WhatsApp delivers (JPEG, PNG, WebP stickers) plus two harmless classics. The JPEG opener also yields
# "MPO", Pillow's name for the multi-picture JPEGs many phones write. Everything else Pillow can open is
# refused on purpose: e.g. EPS would run Ghostscript, and every decoder is attack surface for untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_PLUGINS = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)

# Transparent pixels are shown on white, the way most viewers display a cut-out or a sticker; the RGB under
# alpha=0 is often undefined garbage that the detector should not see.
ALPHA_BACKGROUND = (255, 255, 255)

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112

# Errors Pillow raises for corrupt, truncated or unidentifiable data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError)


@dataclass(frozen=True)
class DecodedImage:
    """``pixels`` may be smaller than the photo (JPEG draft); ``width``/``height`` are the full upright size."""

    pixels: Image.Image
    width: int
    height: int
    format: str


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, fit: int = 0) -> DecodedImage:
    """Decode ``data`` as a photo; with ``fit`` > 0 a JPEG may decode at 1/2..1/8 scale if it still covers ``fit`` px.

    DCT-domain scaling in libjpeg skips most of the work of a full decode, and the detector only ever sees
    its canvas, so decoding a 12 MP photo at full size would be wasted time and memory.
    """
    if not data:
        raise InvalidImage("the image is empty")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image has too many pixels ({error})") from None
    except Image.UnidentifiedImageError:
        raise InvalidImage("not an image in a supported format (JPEG, PNG, WebP, GIF, BMP)") from None
    except _DECODE_ERRORS as error:
        raise InvalidImage(f"the image header is unreadable: {error}") from None
    fmt = image.format or "UNKNOWN"
    stored_width, stored_height = image.size
    if stored_width <= 0 or stored_height <= 0:
        raise InvalidImage("the image has no pixels")
    if stored_width * stored_height > max_pixels:
        raise ImageTooLarge(f"the image is {stored_width}x{stored_height} pixels; the limit is {max_pixels} pixels")
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        orientation = 1  # A broken EXIF block should not cost the photo: it is used as stored.
    width, height = stored_width, stored_height
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if fmt in ("JPEG", "MPO") and fit > 0:
        # Ask for the size the letterbox will shrink the photo to; libjpeg picks the smallest 1/2, 1/4 or 1/8
        # scale that still covers it, so the resize that follows only ever shrinks.
        ratio = fit / max(stored_width, stored_height)
        image.draft("RGB", (max(1, round(stored_width * ratio)), max(1, round(stored_height * ratio))))
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        rgb = _to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image has too many pixels ({error})") from None
    except _DECODE_ERRORS as error:
        raise InvalidImage(f"the image data is corrupt or truncated: {error}") from None
    return DecodedImage(pixels=rgb, width=width, height=height, format=fmt)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Every mode Pillow can hand back from the accepted formats, as 8-bit RGB."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own I;16 -> L conversion clips at 255 (almost all white); keep the 8 high bits instead.
        wide = np.asarray(image).astype(np.uint32)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
