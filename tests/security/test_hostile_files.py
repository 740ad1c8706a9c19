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

from gateway import replies
from bench.hostile_media import CORPUS as HOSTILE_MEDIA
from bench.hostile_media import big_message_items, video_with_huge_frame
from tests.fixtures.gateway import MediaServer, media_files, media_form, reply_of, signed_post, spooled
from bench.photo_set import face_photo
from tests.vision_service.images import face_image, truncated_jpeg


def _zip(payload: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("payload.bin", payload)
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


# (name, declared content type, bytes factory taking a scratch dir, expected reply, stored?): the files
# that need a photo with a face or are kept, then bench.hostile_media's corpus (the files that attack
# memory, shared with `make bench-hostile`).
CORPUS: list[tuple[str, str, Callable[[Path], bytes], str | re.Pattern[str], bool]] = [
    ("photo-zero-length", "image/jpeg", lambda _: b"", replies.PHOTO_UNREADABLE, False),
    ("photo-truncated-jpeg", "image/jpeg", lambda _: truncated_jpeg(), replies.PHOTO_UNREADABLE, False),
    ("photo-wrong-magic", "image/png", lambda _: b"\x89PNX\r\n\x1a\n" + bytes(range(256)) * 8,
     replies.PHOTO_UNREADABLE, False),
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
    # A real Matroska file with 2 s of Opus beside one 8192x8192 PNG video frame: its audio is kept, the
    # video stream is never decoded (tests/audio_service/test_convert.py checks ffmpeg's memory).
    ("audio-mkv-8192px-png-video-and-opus", "audio/ogg", lambda d: video_with_huge_frame(d, audio=True),
     "Saved your voice message (2.0 s).", True),
    *((f.name, f.content_type, f.make, f.reply, f.stored) for f in HOSTILE_MEDIA),
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


def test_ten_items_at_the_size_cap_in_one_message_each_get_their_reply(
    gateway: Flask, media_server: MediaServer, media_root: Path,
) -> None:
    """160 MiB of media in one webhook: every item is downloaded, sent and refused in turn, within the budget."""
    items = big_message_items()
    assert [len(body) for _, body, _ in items] == [16 * 1024 * 1024] * 10
    media = [(media_server.add(f"/big-{index}", body=body, content_type=content_type), content_type)
             for index, (content_type, body, _) in enumerate(items)]
    form = media_form(media)
    text = reply_of(signed_post(gateway.test_client(), form))
    assert text == replies.combine([reply for _, _, reply in items])
    assert media_files(media_root) == []
    assert spooled(media_root) == []
