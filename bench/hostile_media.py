"""Hostile media, made on the spot with Pillow and ffmpeg (nothing committed): files whose few bytes
describe far more pixels, samples or streams than they seem to, each with the reply the bot must give.

Shared by tests/security/test_hostile_files.py (each file through the real gateway and services) and
bench/hostile.py (the whole corpus through the running stack, with the processes' peak memory). A file
here never needs a photo with a face, so the corpus is the same wherever it is made.
"""

from __future__ import annotations

import io
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gateway import replies

# The vision service's default pixel cap (VISION_MAX_PIXELS): 7071 x 7071 is just under it.
PIXEL_CAP_SIDE = 7071
MIB = 1024 * 1024


@dataclass(frozen=True)
class HostileFile:
    name: str
    # What the webhook declares (MediaContentType); what the file really is may differ.
    content_type: str
    make: Callable[[Path], bytes]
    # The exact reply, or a regular expression the reply must match in full.
    reply: str
    stored: bool = False


def transparent_lossless_webp(side: int = PIXEL_CAP_SIDE) -> bytes:
    """About 2 KB on disk; Pillow and libwebp would hold 16 bytes per pixel of it (800 MB at 7071^2)."""
    return _encode(Image.new("RGBA", (side, side), (0, 0, 0, 0)), "WEBP", lossless=True)


def grey_16_bit_png(side: int = PIXEL_CAP_SIDE) -> bytes:
    """A 16-bit greyscale gradient: Pillow decodes it as I;16 (2 bytes per pixel), a naive convert copies it 3 times."""
    row = np.linspace(0, 65535, side, dtype=np.uint16)
    return _encode(Image.fromarray(np.broadcast_to(row, (side, side)).copy()), "PNG")


def cmyk_jpeg(side: int = PIXEL_CAP_SIDE) -> bytes:
    """A CMYK JPEG at the pixel cap (Adobe inverted CMYK, as Photoshop writes it)."""
    return _encode(Image.new("CMYK", (side, side), (0, 180, 180, 20)), "JPEG", quality=80)


def apng(side: int = 4000, frames: int = 3) -> bytes:
    """An animated PNG of big translucent frames: only the first should ever be decoded."""
    images = [Image.new("RGBA", (side, side), (60 * i, 40, 200, 128)) for i in range(frames)]
    return _encode(images[0], "PNG", save_all=True, append_images=images[1:], duration=100)


def animated_webp(side: int = 2000, frames: int = 3) -> bytes:
    """An animated lossless WebP: libwebp's animation decoder keeps two full canvases besides the frame."""
    images = [Image.new("RGBA", (side, side), (60 * i, 40, 200, 255)) for i in range(frames)]
    return _encode(images[0], "WEBP", save_all=True, append_images=images[1:], duration=100, lossless=True)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: ~100 KB on disk, 900 MP once decoded.

    Written chunk by chunk (zlib over one zero row at a time) so making it costs no memory either.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def huge_dimensions_jpeg() -> bytes:
    """A small real JPEG whose SOF header is rewritten to claim 65000 x 65000 pixels (4.2 GP)."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), "white"), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def zip_bomb() -> bytes:
    """42.zip's idea at test size: 200 MB of zeros deflated to about 200 KB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as entry:
            block = b"\0" * MIB
            for _ in range(200):
                entry.write(block)
    return out.getvalue()


def video_with_huge_frame(directory: Path, *, side: int = 8192, audio: bool = False) -> bytes:
    """Matroska with one black ``side`` x ``side`` PNG video frame (and, with ``audio``, 2 s of Opus).

    A few hundred KB; a decoder that looks at the video stream holds 200+ MB for its one frame.
    """
    path = directory / f"video_{side}{'_audio' if audio else ''}.mkv"
    if not path.exists():
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                   "-f", "lavfi", "-i", f"color=c=black:s={side}x{side}:d=1:r=1"]
        if audio:
            command += ["-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-map", "0:v", "-map", "1:a",
                        "-c:a", "libopus", "-b:a", "24k"]
        command += ["-c:v", "png", "-f", "matroska", str(path)]
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return path.read_bytes()


def make_silence_flac(directory: Path, seconds: int) -> Path:
    """Long silence in a few kB: a FLAC frame of digital silence is one constant, and frames can hold 65535
    samples, so two hours at 8 kHz take about 20 kB. The shape of a decompression bomb."""
    path = directory / f"silence_{seconds}s.flac"
    if not path.exists():
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", "anullsrc=r=8000:cl=mono", "-t", str(seconds), "-c:a", "flac", "-sample_fmt", "s16",
             "-frame_size", "65535", "-strict", "experimental", str(path)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True,
        )
    return path


def max_size_noise(size: int = 16 * MIB, seed: int = 0, magic: bytes = b"") -> bytes:
    """``size`` random bytes after ``magic``: an item exactly at WhatsApp's 16 MiB cap that no decoder accepts."""
    return magic + np.random.default_rng(seed).bytes(size - len(magic))


# One message carrying ten items at the 16 MiB cap, half declared photos and half voice notes (random bytes
# after an Ogg page's magic, so the audio service refuses them as damaged Ogg): (content type, body, reply).
def big_message_items() -> list[tuple[str, bytes, str]]:
    items = []
    for index in range(10):
        if index % 2:
            items.append(("audio/ogg", max_size_noise(seed=index, magic=b"OggS"), replies.AUDIO_UNREADABLE))
        else:
            jpeg_start = max_size_noise(seed=index, magic=b"\xff\xd8\xff")
            items.append(("image/jpeg", jpeg_start, replies.PHOTO_UNREADABLE))
    return items


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


# Files that must be refused or survived without the memory they ask for; none is stored.
CORPUS: list[HostileFile] = [
    HostileFile("photo-webp-7071px-transparent-lossless", "image/webp", lambda _: transparent_lossless_webp(),
                replies.PHOTO_TOO_BIG),
    HostileFile("photo-png-7071px-16-bit-grey", "image/png", lambda _: grey_16_bit_png(), replies.NO_FACE),
    HostileFile("photo-jpeg-7071px-cmyk", "image/jpeg", lambda _: cmyk_jpeg(), replies.NO_FACE),
    HostileFile("photo-apng-4000px-3-frames", "image/png", lambda _: apng(), replies.NO_FACE),
    HostileFile("photo-webp-2000px-animated", "image/webp", lambda _: animated_webp(), replies.NO_FACE),
    HostileFile("photo-png-decompression-bomb", "image/png", lambda _: png_bomb(), replies.PHOTO_TOO_BIG),
    HostileFile("photo-jpeg-claims-65000x65000", "image/jpeg", lambda _: huge_dimensions_jpeg(),
                replies.PHOTO_TOO_BIG),
    HostileFile("photo-zip-bomb", "image/jpeg", lambda _: zip_bomb(), replies.PHOTO_UNREADABLE),
    HostileFile("audio-mkv-8192px-png-video-only", "audio/ogg", lambda d: video_with_huge_frame(d),
                replies.AUDIO_UNREADABLE),
    HostileFile("audio-zip-bomb", "audio/mpeg", lambda _: zip_bomb(), replies.AUDIO_UNREADABLE),
    HostileFile("audio-silence-bomb", "audio/flac", lambda d: make_silence_flac(d, 7200).read_bytes(),
                replies.AUDIO_TOO_BIG),
]
