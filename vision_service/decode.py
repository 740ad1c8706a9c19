"""Photo bytes -> one upright RGB picture, with Pillow, in bounded memory whatever the bytes claim.

Memory, not just pixels, is what a hostile photo attacks: a 2 KB lossless WebP can describe 7071x7071
transparent pixels, which Pillow decodes through libwebp into about 16 bytes per pixel (800 MB). So:
- the header's size is checked against the pixel cap before anything is decoded;
- JPEG decodes at 1/2..1/8 scale in libjpeg (draft) when the detector's canvas allows it;
- every other format can only decode at full size, so what that costs is worked out from the header
  (pixels x bytes per pixel of the mode Pillow decodes into, x4 for WebP's decoder buffers, plus
  libjpeg's whole-image coefficient buffer for progressive or multi-scan JPEGs) and reserved from one
  process-wide allowance (``DecodeMemory``) before decoding: a photo that alone needs more is refused as
  too large, one that must wait for room waits a moment, then is refused as busy (retryable);
- the full-size picture is turned into RGB strip by strip, each strip shrunk (Image.reduce) before the
  next, so mode conversions (16-bit, CMYK, palettes) and compositing transparency onto white never hold a
  second full-size copy;
- animated images (APNG, animated WebP and GIF) are decoded to their first frame only.

No I/O. The only process-wide state is the allowance, sized once at start-up by server.py (as it sets
``Image.MAX_IMAGE_PIXELS``, Pillow's own backstop; the header check here is what gives a clean
``ImageTooLarge`` for any limit).
"""

from __future__ import annotations

import io
import math
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import (  # Registering exactly the accepted formats' plugins (Image.open(formats=...) needs them loaded).
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from vision_service.errors import DecoderBusy, ImageTooLarge, InvalidImage

# What WhatsApp delivers (JPEG, PNG, WebP stickers) plus two harmless classics. The JPEG opener also yields
# "MPO", Pillow's name for the multi-picture JPEGs many phones write. Everything else Pillow can open is
# refused on purpose: e.g. EPS would run Ghostscript, and every decoder is attack surface for untrusted bytes.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_PLUGINS = (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)

# Transparent pixels are shown on white, the way most viewers display a cut-out or a sticker; the RGB under
# alpha=0 is often undefined garbage that the detector should not see.
ALPHA_BACKGROUND = (255, 255, 255)

MIB = 1024 * 1024
# The allowance until server.py sizes it from VISION_DECODE_MEMORY_MB (the same default as config.py).
DEFAULT_DECODE_MEMORY_BYTES = 200 * MIB
# How long a photo waits for room in the allowance when the caller gives no deadline.
DEFAULT_WAIT_S = 5.0

# Bytes per pixel of Pillow's storage: 8-bit modes take one, 16-bit two, and everything else (RGB
# included, stored as 4 bytes) four.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Pillow decodes every WebP with libwebp's animation decoder, which keeps two RGBA canvases of its own, then
# hands the frame over as a bytes object that is copied into the image: four 4-byte copies (measured:
# 16 MP -> 244 MB of RSS).
_WEBP_COPIES = 4
# Bytes per DCT coefficient in libjpeg's whole-image buffer (JCOEF is a 16-bit short).
_COEFFICIENT_BYTES = 2
# Full-size rows converted at once: a strip and its RGB conversion stay a few MB whatever the width.
_STRIP_BYTES = 4 * MIB
# Modes that carry transparency; "P" joins them when its palette has a transparent entry.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# EXIF orientation -> the transpose that makes the picture upright (Pillow's ImageOps.exif_transpose table,
# applied here to the small RGB result rather than to the full-size decode).
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Errors Pillow raises for corrupt, truncated or unidentifiable data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError, struct.error)


@dataclass(frozen=True)
class DecodedImage:
    """``pixels`` may be smaller than the photo (reduced decode); ``width``/``height`` are the full upright size."""

    pixels: Image.Image
    width: int
    height: int
    format: str


class DecodeMemory:
    """Bytes of full-size decoding allowed at once in this process, shared by every thread decoding a photo.

    A counting semaphore over bytes rather than over calls: a thousand small JPEGs may decode side by side,
    one 50 MP PNG takes the room of many. A hand-written Condition because threading.Semaphore cannot take
    or give back more than one unit atomically.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("the decode allowance must be positive")
        self._capacity = capacity_bytes
        self._used = 0
        self._changed = threading.Condition()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def used(self) -> int:
        with self._changed:
            return self._used

    def resize(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("the decode allowance must be positive")
        with self._changed:
            self._capacity = capacity_bytes
            self._changed.notify_all()

    @contextmanager
    def reserve(self, nbytes: int, *, deadline: float, what: str) -> Iterator[None]:
        """Hold ``nbytes`` of the allowance for the ``with`` block.

        ImageTooLarge when ``nbytes`` alone exceeds it (final: the photo would never fit); DecoderBusy when
        other decodes still hold the room at ``deadline`` (a ``time.monotonic()`` instant; worth retrying).
        """
        with self._changed:
            if nbytes > self._capacity:
                raise ImageTooLarge(
                    f"{what} needs about {math.ceil(nbytes / MIB)} MiB to decode; the limit is "
                    f"{self._capacity // MIB} MiB (VISION_DECODE_MEMORY_MB)"
                )
            while self._used + nbytes > self._capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecoderBusy(f"other photos are using the decode memory; {what} can be retried later")
                self._changed.wait(left)
            self._used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()


DECODE_MEMORY = DecodeMemory(DEFAULT_DECODE_MEMORY_BYTES)


def set_decode_memory(capacity_bytes: int) -> None:
    """Size the process-wide allowance (server.py, once at start-up, from VISION_DECODE_MEMORY_MB)."""
    DECODE_MEMORY.resize(capacity_bytes)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    fit: int = 0,
    deadline: float | None = None,
    memory: DecodeMemory | None = None,
) -> DecodedImage:
    """Decode ``data`` as a photo; with ``fit`` > 0 the result may be shrunk to still cover ``fit`` px.

    The detector only ever sees its canvas, so decoding a 12 MP photo to full size would be wasted time and
    memory: JPEG decodes at 1/2..1/8 scale in libjpeg (DCT-domain scaling skips most of the work), other
    formats are shrunk by an integer factor (box filter) as they are converted. ``deadline`` (a
    ``time.monotonic()`` instant) bounds the wait for decode memory; ``memory`` defaults to the process's.
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
    try:
        plan = _plan(image, data, max_pixels, fit)
    except BaseException:
        image.close()
        raise
    wait_until = time.monotonic() + DEFAULT_WAIT_S if deadline is None else deadline
    with (memory or DECODE_MEMORY).reserve(plan.cost, deadline=wait_until, what=plan.what):
        try:
            rgb, orientation = _convert(image, plan.factor)
        finally:
            # The last reference to the full-size pixels (and WebP's decoder buffers): they are freed here,
            # inside the reservation, not whenever the caller lets go.
            del image
    width, height = plan.stored_size
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return DecodedImage(pixels=rgb, width=width, height=height, format=plan.format)


@dataclass(frozen=True)
class _Plan:
    format: str
    stored_size: tuple[int, int]
    # Integer shrink applied while converting (after any JPEG draft scale).
    factor: int
    # Bytes the decode holds at its peak, reserved before it starts.
    cost: int
    # "a 7071x7071 WEBP", for the messages.
    what: str


def _plan(image: Image.Image, data: bytes, max_pixels: int, fit: int) -> _Plan:
    """Checks from the header, then the decode's scale and memory, before any pixel is decoded."""
    fmt = image.format or "UNKNOWN"
    stored_width, stored_height = image.size
    if stored_width <= 0 or stored_height <= 0:
        raise InvalidImage("the image has no pixels")
    if stored_width * stored_height > max_pixels:
        raise ImageTooLarge(f"the image is {stored_width}x{stored_height} pixels; the limit is {max_pixels} pixels")
    target = _fit_size(stored_width, stored_height, fit)
    coefficients = 0
    try:
        if fmt in ("JPEG", "MPO"):
            coefficients = _jpeg_coefficient_bytes(image, data)
            if target is not None:
                # libjpeg picks the smallest 1/2, 1/4 or 1/8 scale that still covers the target, so the
                # shrink that follows is small.
                image.draft("RGB", target)
    except _DECODE_ERRORS as error:
        raise InvalidImage(f"the image header is unreadable: {error}") from None
    factor = 1
    if target is not None and fmt not in ("JPEG", "MPO"):  # (libjpeg's own scale is as far as JPEG goes)
        factor = max(1, min(stored_width // target[0], stored_height // target[1]))
    return _Plan(
        format=fmt,
        stored_size=(stored_width, stored_height),
        factor=factor,
        cost=_decode_bytes(image, fmt) + coefficients,
        what=f"a {stored_width}x{stored_height} {fmt}",
    )


def _convert(image: Image.Image, factor: int) -> tuple[Image.Image, int]:
    """Decode, shrink, make RGB and upright; returns the picture and the EXIF orientation it had."""
    rgb = None
    try:
        image.load()
        # After load: PNG may keep its EXIF after the pixels, and Pillow would decode them to find it.
        orientation = _orientation(image)
        rgb = _shrink_to_rgb(image, factor)
        if orientation in _UPRIGHT:
            rgb = rgb.transpose(_UPRIGHT[orientation])
        elif rgb is image and image.format == "WEBP":
            rgb = image.copy()  # without it, the caller's picture would keep libwebp's canvases alive
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image has too many pixels ({error})") from None
    except _DECODE_ERRORS as error:
        raise InvalidImage(f"the image data is corrupt or truncated: {error}") from None
    finally:
        if rgb is not image:
            image.close()
    return rgb, orientation


def _fit_size(width: int, height: int, fit: int) -> tuple[int, int] | None:
    """The size the letterbox will shrink the stored picture to, or None when it need not be shrunk."""
    if fit <= 0:
        return None
    ratio = fit / max(width, height)
    if ratio >= 1:
        return None
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1  # A broken EXIF block should not cost the photo: it is used as stored.


def _decode_bytes(image: Image.Image, fmt: str) -> int:
    """What Pillow will hold once ``image`` (not yet loaded) is decoded at its current size."""
    width, height = image.size
    size = width * height * _PIXEL_BYTES.get(image.mode, 4)
    return size * _WEBP_COPIES if fmt == "WEBP" else size


def _jpeg_coefficient_bytes(image: Image.Image, data: bytes) -> int:
    """libjpeg's whole-image DCT coefficient buffer, which scaled decoding does not shrink, or 0 without one.

    libjpeg keeps every coefficient of the full-size picture (2 bytes each, per component at its sampling)
    when the file is progressive or its first scan lacks some components (non-interleaved sequential);
    a 50 MP progressive CMYK JPEG needs 400 MB of it. Interleaved baseline JPEGs, what cameras write,
    decode row by row with no such buffer.
    """
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    components = len(image.layer) if isinstance(image, JpegImagePlugin.JpegImageFile) else 0
    if not progressive and components and _first_scan_components(data) >= components:
        return 0
    width, height = image.size
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * max(1, components)
    h_max = max(max(layer[1] for layer in layers), 1)
    v_max = max(max(layer[2] for layer in layers), 1)
    blocks = sum(
        math.ceil(width * max(layer[1], 1) / h_max / 8) * math.ceil(height * max(layer[2], 1) / v_max / 8)
        for layer in layers
    )
    return blocks * 64 * _COEFFICIENT_BYTES


def _first_scan_components(data: bytes) -> int:
    """Components in the JPEG's first scan (its SOS header), walking the marker segments before it; 0 if absent.

    Pillow stops reading at that header without keeping it, and a dozen lines here avoid a JPEG parser
    dependency for one byte.
    """
    pos = 2  # after SOI
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn stand alone
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker == 0xDA:
            return data[pos + 4] if pos + 4 < end else 0
        pos += 2 + length
    return 0


def _shrink_to_rgb(image: Image.Image, factor: int) -> Image.Image:
    """The loaded ``image`` as 8-bit RGB, shrunk ``factor`` times (box filter), never holding a second full-size copy."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image.reduce(factor) if factor > 1 else image
    if image.mode == "L" and "transparency" not in image.info:
        return (image.reduce(factor) if factor > 1 else image).convert("RGB")
    width, height = image.size
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    # Strips are a whole number of reduction boxes tall, so shrinking strip by strip is exactly Image.reduce.
    rows = max(1, _STRIP_BYTES // (4 * width) // factor) * factor
    for top in range(0, height, rows):
        strip = _strip_to_rgb(image.crop((0, top, width, min(height, top + rows))))
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def _strip_to_rgb(strip: Image.Image) -> Image.Image:
    """One strip of any mode the accepted formats decode to, as 8-bit RGB."""
    mode = strip.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own I;16 -> L conversion clips at 255 (almost all white); keep the 8 high bits instead.
        wide = np.asarray(strip)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in strip.info:
        rgba = strip.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return strip.convert("RGB")
