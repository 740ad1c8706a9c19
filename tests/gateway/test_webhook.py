"""POST /whatsapp end to end: the real app, a real audio gRPC service, a real media server, real signatures."""

from __future__ import annotations

import json
import logging
import re
import threading
import wave
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from flask import Flask

from gateway import replies
from gateway.processing import MediaProcessor
from tests.fixtures.gateway import (
    SENDER_ID,
    MediaServer,
    media_files,
    media_form,
    reply_of,
    signed_post,
    spooled,
    stored_files,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def audio_files(root: Path, sender: str = SENDER_ID) -> list[Path]:
    return sorted((root / "whatsapp" / sender / "audio").glob("*.wav"))


def saved_reply(text: str) -> bool:
    return re.fullmatch(r"Saved your voice message \(\d+\.\d s\)\.", text) is not None


# -- the happy path ---------------------------------------------------------------------------------------


def test_voice_note_is_stored_as_wav_under_the_waid_prefix(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data = voice_note.read_bytes()
    url = media_server.add("/media/voice", body=data, content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")], ProfileName="Ana")

    text = reply_of(signed_post(gateway_app.test_client(), form))

    assert saved_reply(text), text
    (wav_path,) = audio_files(media_root)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z_{form['MessageSid']}_0\.wav", wav_path.name)
    with wave.open(BytesIO(wav_path.read_bytes())) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        frames = wav.getnframes()
    sidecar = json.loads(wav_path.with_name(wav_path.name + ".json").read_text())
    assert sidecar["message_sid"] == form["MessageSid"]
    assert sidecar["media_index"] == 0
    assert sidecar["sender_id"] == SENDER_ID
    assert sidecar["profile_name"] == "Ana"
    assert sidecar["original"] == {"content_type": "audio/ogg", "size": len(data)}
    assert sidecar["audio"]["sample_rate_hz"] == 16000
    assert abs(sidecar["audio"]["duration_ms"] - frames / 16) <= 1
    assert sidecar["source"]["codec"] == "opus"
    assert sidecar["content_type"] == "audio/wav"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sidecar["received_at"])
    assert text == f"Saved your voice message ({sidecar['audio']['duration_ms'] / 1000:.1f} s)."
    # Credentials went to the media host.
    (seen,) = media_server.requests_for("/media/voice")
    assert seen.authorization == media_server.expected_auth

    # One log line per webhook and per item, with the fields operators filter on, and no full phone number.
    (item_log,) = [r for r in caplog.records if r.getMessage() == "media item handled"]
    (hook_log,) = [r for r in caplog.records if r.getMessage() == "webhook handled"]
    assert (item_log.message_sid, item_log.media_index, item_log.content_type, item_log.outcome) == (
        form["MessageSid"], 0, "audio/ogg", "saved"
    )
    assert item_log.elapsed_ms > 0 and hook_log.elapsed_ms >= item_log.elapsed_ms
    assert hook_log.message_sid == form["MessageSid"] and hook_log.outcome == "saved"
    assert item_log.sender == hook_log.sender == "*******4567"
    assert not any(SENDER_ID in str(vars(r)) for r in caplog.records if r.name.startswith("gateway"))


def test_waid_wins_over_from(gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path) -> None:
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")], WaId="4915123456789", From="whatsapp:+4915123456789")
    assert saved_reply(reply_of(signed_post(gateway_app.test_client(), form)))
    assert len(audio_files(media_root, "4915123456789")) == 1


def test_sender_without_waid_is_filed_under_the_digits_of_from(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    del form["WaId"]
    assert saved_reply(reply_of(signed_post(gateway_app.test_client(), form)))
    assert len(audio_files(media_root)) == 1


def test_mixed_message_gets_one_reply_and_the_right_files(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path, mp3_audio: Path
) -> None:
    media = [
        (media_server.add("/m/0", body=voice_note.read_bytes(), content_type="audio/ogg"), "audio/ogg"),
        (media_server.add("/m/1", body=b"\0\0\0\x18ftypmp42", content_type="video/mp4"), "video/mp4"),
        (media_server.add("/m/2", body=mp3_audio.read_bytes(), content_type="audio/mpeg"), "audio/mpeg"),
    ]
    form = media_form(media)

    response = signed_post(gateway_app.test_client(), form)

    lines = reply_of(response).split("\n")
    assert len(lines) == 3
    assert lines[0].startswith("1. Saved your voice message (")
    assert lines[1] == "2. " + replies.unsupported("videos")
    assert lines[2].startswith("3. Saved your voice message (")
    assert [p.name.split("_", 1)[1] for p in audio_files(media_root)] == sorted(
        [f"{form['MessageSid']}_0.wav", f"{form['MessageSid']}_2.wav"]
    )
    assert media_server.requests_for("/m/1") == []  # the video was never downloaded


# -- idempotency ------------------------------------------------------------------------------------------


def test_replayed_webhook_keeps_one_file(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    client = gateway_app.test_client()

    first = reply_of(signed_post(client, form))
    second = reply_of(signed_post(client, form))

    assert first == second and saved_reply(first)
    assert len(audio_files(media_root)) == 1
    assert len(media_files(media_root)) == 2  # the WAV and its sidecar
    assert len(media_server.requests_for("/media/voice")) == 1  # the replay did not even download
    outcomes = [r.outcome for r in caplog.records if r.getMessage() == "media item handled"]
    assert outcomes == ["saved", "already_saved"]


def test_two_concurrent_deliveries_land_on_one_file(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    # The delay keeps both deliveries in flight at once: both download and convert, then race to store.
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg", delay_s=0.3)
    form = media_form([(url, "audio/ogg")])
    start = threading.Barrier(2)
    texts: list[str] = []

    def deliver() -> None:
        client = gateway_app.test_client()
        start.wait()
        texts.append(reply_of(signed_post(client, form)))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # The second delivery waits for the first one's spool lease, then finds the object: one download.
    assert len(media_server.requests_for("/media/voice")) == 1
    assert len(texts) == 2 and texts[0] == texts[1] and saved_reply(texts[0])
    assert len(audio_files(media_root)) == 1
    assert len(media_files(media_root)) == 2


# -- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "whatsapp:+1../../etc",
        "whatsapp:../../../tmp/pwned",
        "whatsapp:+15551234567/../../../pwned",
        "whatsapp:+%2e%2e%2f%2e%2e",
        "whatsapp:+15551234567\x00",
        "whatsapp:+1555123456789012345",
        "whatsapp:+",
    ],
)
def test_hostile_from_is_refused_and_nothing_is_written(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, tmp_path: Path, voice_note: Path, sender: str
) -> None:
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")], From=sender, WaId="")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    assert reply_of(signed_post(gateway_app.test_client(), form)) == replies.INVALID_SENDER

    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert stored_files(media_root) == []
    assert media_server.seen == []


@pytest.mark.parametrize("sid", ["MM../../../etc", "MM" + "0" * 31, "AC" + "0" * 32, ""])
def test_bad_message_sid_is_refused(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path, sid: str
) -> None:
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")], MessageSid=sid)
    assert reply_of(signed_post(gateway_app.test_client(), form)) == replies.INVALID_MESSAGE
    assert stored_files(media_root) == [] and media_server.seen == []


def test_media_host_off_the_allowlist_is_not_fetched(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, MEDIA_HOST_ALLOWLIST="127.0.0.1")
    media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(media_server.url("/media/voice", host="localhost"), "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == "Sorry, I couldn't download your voice message."
    assert media_server.seen == []
    assert stored_files(media_root) == []


# -- media host trouble -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"statuses": (404,)}, "Sorry, I couldn't download your voice message."),
        # Transient: spooled for the background worker, the user told it will be saved shortly.
        ({"statuses": (500,)}, replies.RECEIVED_VOICE),
        ({"statuses": (503,)}, replies.RECEIVED_VOICE),
        ({"delay_s": 1.5}, replies.RECEIVED_VOICE),
    ],
    ids=["404", "500", "503", "slow"],
)
def test_media_host_failures_get_a_clear_reply(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path, route: dict[str, object], expected: str,
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, DOWNLOAD_READ_TIMEOUT_S="0.5")
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg", **route)
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == expected
    assert stored_files(media_root) == []
    assert spooled(media_root) == ([form["MessageSid"]] if expected == replies.RECEIVED_VOICE else [])


def test_404_then_200_is_saved_after_the_default_retry(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, MEDIA_404_RETRY_DELAYS_S="1,3")  # production's schedule
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg", statuses=(404, 200))
    assert saved_reply(reply_of(signed_post(app.test_client(), media_form([(url, "audio/ogg")]))))
    assert len(media_server.requests_for("/media/voice")) == 2
    assert len(audio_files(media_root)) == 1


def test_redirect_to_the_cdn_host_carries_no_credentials(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    cdn = media_server.add("/cdn/voice", body=voice_note.read_bytes(), content_type="audio/ogg", require_auth=False)
    api = media_server.add("/api/media/voice", redirect_to=cdn.replace("127.0.0.1", "localhost"))
    assert saved_reply(reply_of(signed_post(gateway_app.test_client(), media_form([(api, "audio/ogg")]))))
    assert media_server.requests_for("/api/media/voice")[0].authorization == media_server.expected_auth
    (cdn_seen,) = media_server.requests_for("/cdn/voice")
    assert cdn_seen.host.startswith("localhost") and cdn_seen.authorization is None
    assert len(audio_files(media_root)) == 1


def test_oversized_download_is_aborted_with_a_clear_reply(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, MAX_MEDIA_BYTES=str(256 * 1024))
    url = media_server.add("/media/big", body=b"\0" * (4 * 1024 * 1024), content_type="audio/ogg", send_length=False)
    text = reply_of(signed_post(app.test_client(), media_form([(url, "audio/ogg")])))
    assert text == "Your voice message is too big for me (over 0.25 MB)."
    assert stored_files(media_root) == []


# -- what is not kept -------------------------------------------------------------------------------------


def test_text_only_message_gets_help(gateway_app: Flask, media_root: Path) -> None:
    form = media_form([], Body="hello?")
    assert form["MessageSid"].startswith("SM") and form["MessageType"] == "text"
    assert reply_of(signed_post(gateway_app.test_client(), form)) == replies.HELP
    assert stored_files(media_root) == []


def test_location_message_gets_help(gateway_app: Flask, media_root: Path) -> None:
    form = media_form([], MessageType="location", Latitude="52.52", Longitude="13.40", Address="Berlin")
    assert reply_of(signed_post(gateway_app.test_client(), form)) == replies.HELP
    assert stored_files(media_root) == []


@pytest.mark.parametrize(
    ("content_type", "message_type", "expected"),
    [
        ("video/mp4", "video", replies.unsupported("videos")),
        ("application/pdf", "document", replies.unsupported("documents")),
        ("text/vcard", "document", replies.unsupported("contact cards")),
        ("image/webp", "sticker", replies.unsupported("stickers")),
        ("image/gif", "image", replies.unsupported("this kind of picture")),
        ("application/octet-stream", "document", replies.unsupported("documents")),
    ],
)
def test_unsupported_media_is_answered_without_downloading(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, content_type: str, message_type: str, expected: str
) -> None:
    url = media_server.add("/media/x", body=b"whatever", content_type=content_type)
    form = media_form([(url, content_type)], MessageType=message_type)
    assert reply_of(signed_post(gateway_app.test_client(), form)) == expected
    assert media_server.seen == []
    assert stored_files(media_root) == []


@pytest.mark.parametrize(
    "body",
    [b"", b"OggS\x00\x02" + b"\x00" * 40, PNG_MAGIC, b"just some text, not audio at all\n" * 20],
    ids=["empty", "truncated-ogg", "png", "text"],
)
def test_bad_audio_gets_a_clear_reply_and_nothing_is_stored(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, body: bytes
) -> None:
    url = media_server.add("/media/voice", body=body, content_type="audio/ogg")
    text = reply_of(signed_post(gateway_app.test_client(), media_form([(url, "audio/ogg")])))
    assert text == replies.AUDIO_UNREADABLE
    assert stored_files(media_root) == []


def test_voice_note_cut_after_its_headers_gets_a_clear_reply(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    # The first 300 bytes of an Ogg Opus file are its OpusHead/OpusTags pages: a valid start, no audio.
    url = media_server.add("/media/voice", body=voice_note.read_bytes()[:300], content_type="audio/ogg")
    text = reply_of(signed_post(gateway_app.test_client(), media_form([(url, "audio/ogg")])))
    assert text == replies.AUDIO_UNREADABLE
    assert stored_files(media_root) == []


def test_audio_that_decodes_to_hours_is_refused(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, gateway_media_dir: Path
) -> None:
    from tests.fixtures.audio import make_silence_flac

    flac = make_silence_flac(gateway_media_dir, 3 * 3600)
    url = media_server.add("/media/long", body=flac.read_bytes(), content_type="audio/flac")
    assert reply_of(signed_post(gateway_app.test_client(), media_form([(url, "audio/flac")]))) == replies.AUDIO_TOO_BIG
    assert stored_files(media_root) == []


def test_audio_service_down_gets_a_clear_reply(
    make_gateway: Callable[..., Flask], media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    app = make_gateway()  # AUDIO_SERVICE_ADDR: a port nothing listens on
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    assert stored_files(media_root) == []
    assert spooled(media_root) == [form["MessageSid"]]  # the worker will convert it once the service is back


def test_vision_service_down_means_the_photo_is_not_kept(
    gateway_app: Flask, media_server: MediaServer, media_root: Path
) -> None:
    url = media_server.add("/media/photo", body=b"\xff\xd8\xff\xe0" + b"\0" * 100, content_type="image/jpeg")
    form = media_form([(url, "image/jpeg")])
    text = reply_of(signed_post(gateway_app.test_client(), form))
    assert text == replies.RECEIVED_PHOTO
    assert stored_files(media_root) == []
    assert spooled(media_root) == [form["MessageSid"]]


def test_storage_failure_gets_a_clear_reply(
    gateway_app: Flask, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    (media_root / "whatsapp").write_text("not a directory")  # works as root too, unlike chmod
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    text = reply_of(signed_post(gateway_app.test_client(), form))
    assert text == replies.RECEIVED_VOICE
    assert spooled(media_root) == [form["MessageSid"]]


def test_a_bug_in_one_item_still_gets_a_reply_for_every_item(
    gateway_app: Flask, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: MediaProcessor, *args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MediaProcessor, "_dispatch", broken)
    url = media_server.add("/media/voice", body=b"x", content_type="audio/ogg")
    response = signed_post(gateway_app.test_client(), media_form([(url, "audio/ogg"), (url, "video/mp4")]))
    # An unexpected error may be a passing one: both items stay spooled for the worker to try again.
    assert reply_of(response) == f"1. {replies.RECEIVED_VOICE}\n2. {replies.RECEIVED_OTHER}"
    assert b"Traceback" not in response.data


def test_a_bug_outside_the_items_is_still_answered_with_twiml(
    gateway_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.whatsapp.webhook

    def broken(form: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.whatsapp.webhook, "parse_webhook", broken)
    response = signed_post(gateway_app.test_client(), media_form([]))
    assert reply_of(response) == replies.INTERNAL_ERROR
    assert b"Traceback" not in response.data
