"""A corpus of hostile files, generated here, sent through the real gateway to the real audio and vision
services (and Triton): each gets its expected reply, nothing is stored unless the file really is a keepable
photo or voice note, and every server is still healthy afterwards.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from PIL import Image

from gateway import replies
from tests.fixtures.audio import make_silence_flac
from tests.fixtures.gateway import MediaServer, media_files, media_form, reply_of, signed_post
from tests.fixtures.photos import face_photo
from tests.vision_service.images import face_image, png_bomb, truncated_jpeg


def _huge_dimensions_jpeg() -> bytes:
    """A small real JPEG whose SOF header is rewritten to claim 65000 x 65000 pixels (4.2 GP)."""
    data = bytearray(_jpeg(Image.new("RGB", (16, 16), "white")))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _zip(payload: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.bin", payload)
    return out.getvalue()


def _zip_bomb() -> bytes:
    """42.zip's idea at test size: 200 MB of zeros deflated to about 200 KB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("zeros.bin", "w", force_zip64=True) as entry:
            block = b"\0" * (1024 * 1024)
            for _ in range(200):
                entry.write(block)
    return out.getvalue()


def _wav_header_then_png() -> bytes:
    """Starts as a RIFF/WAVE header (a 'data' chunk claiming 2 GB) and carries a PNG after it."""
    png = io.BytesIO()
    face_image().save(png, "PNG")
    header = b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", 0x7FFFFF00) + png.getvalue()


def _gif() -> bytes:
    out = io.BytesIO()
    face_image().save(out, "GIF")
    return out.getvalue()


# (name, declared content type, bytes factory taking a scratch dir, expected reply, stored?)
CORPUS: list[tuple[str, str, Callable[[Path], bytes], str | re.Pattern[str], bool]] = [
    ("photo-zero-length", "image/jpeg", lambda _: b"", replies.PHOTO_UNREADABLE, False),
    ("photo-truncated-jpeg", "image/jpeg", lambda _: truncated_jpeg(), replies.PHOTO_UNREADABLE, False),
    ("photo-wrong-magic", "image/png", lambda _: b"\x89PNX\r\n\x1a\n" + bytes(range(256)) * 8,
     replies.PHOTO_UNREADABLE, False),
    ("photo-png-decompression-bomb", "image/png", lambda _: png_bomb(), replies.PHOTO_TOO_BIG, False),
    ("photo-jpeg-claims-65000x65000", "image/jpeg", lambda _: _huge_dimensions_jpeg(), replies.PHOTO_TOO_BIG, False),
    ("photo-zip-bomb", "image/jpeg", lambda _: _zip_bomb(), replies.PHOTO_UNREADABLE, False),
    ("photo-wav-header-with-png-inside", "image/png", lambda _: _wav_header_then_png(),
     replies.PHOTO_UNREADABLE, False),
    ("photo-gif-declared-jpeg", "image/jpeg", lambda _: _gif(), replies.PHOTO_FORMAT, False),
    # A JPEG with a ZIP appended is still a valid JPEG (readers stop at EOI): it is judged as a photo, and kept
    # byte for byte like any other photo; the gateway never unpacks or executes what it stores.
    ("photo-jpeg-zip-polyglot", "image/jpeg", lambda _: face_photo() + _zip(b"#!/bin/sh\necho pwned\n"),
     "Saved your photo (1 face found).", True),
    ("audio-zero-length", "audio/ogg", lambda _: b"", replies.AUDIO_UNREADABLE, False),
    ("audio-wrong-magic", "audio/ogg", lambda _: b"OggX" + bytes(range(256)) * 16, replies.AUDIO_UNREADABLE, False),
    ("audio-jpeg-declared-ogg", "audio/ogg", lambda _: face_photo(), replies.AUDIO_UNREADABLE, False),
    # Raw PCM has no magic beyond its header: after a valid WAV header any bytes are samples, so this one is a
    # real (noisy) WAV and is kept like one; its length is bounded by the file's, so it cannot balloon.
    ("audio-wav-header-with-png-inside", "audio/wav", lambda _: _wav_header_then_png(),
     re.compile(r"Saved your voice message \(\d+\.\d s\)\."), True),
    ("audio-zip-bomb", "audio/mpeg", lambda _: _zip_bomb(), replies.AUDIO_UNREADABLE, False),
    # Two hours of FLAC silence in ~20 kB: refused by the duration cap while decoding, not after.
    ("audio-silence-bomb", "audio/flac", lambda d: make_silence_flac(d, 7200).read_bytes(),
     replies.AUDIO_TOO_BIG, False),
]


@pytest.fixture
def gateway(make_gateway: Callable[..., Flask], audio_server: str, vision_server: str) -> Flask:
    return make_gateway(AUDIO_SERVICE_ADDR=audio_server, VISION_SERVICE_ADDR=vision_server)


@pytest.mark.parametrize(("name", "content_type", "make", "expected", "stored"), CORPUS,
                         ids=[case[0] for case in CORPUS])
def test_hostile_file_gets_its_reply(
    gateway: Flask, media_server: MediaServer, media_root: Path, tmp_path: Path,
    name: str, content_type: str, make: Callable[[Path], bytes], expected: str | re.Pattern[str], stored: bool,
) -> None:
    url = media_server.add(f"/{name}", body=make(tmp_path), content_type=content_type)
    client = gateway.test_client()
    text = reply_of(signed_post(client, media_form([(url, content_type)])))
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(text), text
    else:
        assert text == expected
    assert (len(media_files(media_root)) > 0) is stored
    ready = client.get("/readyz").get_json()["dependencies"]
    assert (ready["audio"], ready["vision"]) == ("SERVING", "SERVING")
