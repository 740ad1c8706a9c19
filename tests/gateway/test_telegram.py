"""Telegram end to end: the real gateway, the real audio service, a local Bot API server.

Updates are shaped like Telegram's (gateway.telegram.simulate builds them), posted with the secret header;
the gateway fetches the files from the local Bot API with getFile and the file URL, converts or judges them
like WhatsApp media, and answers with a sendMessage in the response body.
"""

from __future__ import annotations

import json
import logging
import wave
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gateway import replies
from gateway.intake.attempt import Attempts
from gateway.intake.spool import Backoff, Spool
from gateway.telegram.simulate import LocalBotApi, message_update
from gateway.telegram.updates import message_id
from gateway.telegram.webhook import HELP
from gateway.intake.worker import SpoolWorker
from tests.fixtures.gateway import SENDER_ID, MediaServer, closed_port_addr, spooled
from tests.fixtures.telegram import (
    TG_SECRET,
    TG_SENDER,
    TG_TOKEN,
    USER_ID,
    file_update,
    post_update,
    reply_text,
    telegram_env,
    telegram_files,
)


def test_voice_note_is_saved_as_16_khz_wav_under_the_telegram_prefix(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path
) -> None:
    update = file_update(bot_api, voice_note)
    response = post_update(telegram_gateway, update)

    body = response.get_json()
    assert body["chat_id"] == USER_ID
    assert body["reply_parameters"]["message_id"] == update["message"]["message_id"]
    text = reply_text(response)
    assert text.startswith("Saved your voice message (")
    assert "/mydata" in text and "/delete" in text  # the privacy notice, in Telegram's words, on first contact
    (stored,) = telegram_files(media_root, kind="audio")
    chat, message = update["message"]["chat"]["id"], update["message"]["message_id"]
    assert stored.name.endswith(f"_{message_id(chat, message, TG_SECRET)}_0.wav")
    assert str(USER_ID) not in stored.name  # the ids stay out of the key (and the logs)
    with wave.open(str(stored)) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16000, 1)
    sidecar = json.loads(stored.with_name(stored.name + ".json").read_text())
    assert sidecar["sender_id"] == TG_SENDER and sidecar["original"]["content_type"] == "audio/ogg"
    assert bot_api.calls == ["getFile", "file"]
    assert not (media_root / "whatsapp").exists()  # the same digits as a WhatsApp number, another channel


def test_audio_document_is_saved(telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path,
                                 mp3_audio: Path) -> None:
    text = reply_text(post_update(telegram_gateway, file_update(bot_api, mp3_audio, as_document=True)))
    assert text.startswith("Saved your voice message (")
    assert len(telegram_files(media_root, kind="audio")) == 1


@pytest.mark.parametrize(("kind", "content", "what"), [
    ("sticker", {"sticker": {"file_id": "CAACsticker", "file_unique_id": "s", "width": 512, "height": 512,
                             "is_animated": False, "is_video": False, "type": "regular"}}, "stickers"),
    ("video_note", {"video_note": {"file_id": "DQACnote", "file_unique_id": "v", "length": 240,
                                   "duration": 3}}, "video messages"),
])
def test_sticker_and_video_note_are_answered_without_downloading(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, kind: str, content: dict, what: str
) -> None:
    text = reply_text(post_update(telegram_gateway, message_update(USER_ID, **content)))
    assert text.startswith(replies.unsupported(what))
    assert bot_api.calls == [] and telegram_files(media_root) == []


@pytest.mark.parametrize("text", ["/start", "/help", "/help@mediabot_local_bot"])
def test_start_and_help_say_what_the_bot_does(telegram_gateway: Flask, text: str) -> None:
    assert reply_text(post_update(telegram_gateway, message_update(USER_ID, text=text))) == HELP


@pytest.mark.parametrize(("secret", "status"), [(None, 403), ("", 403), ("wrong-secret", 403), (TG_SECRET[:-1], 403)])
def test_missing_or_wrong_secret_is_refused_and_nothing_is_fetched(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path, secret: str | None,
    status: int
) -> None:
    response = post_update(telegram_gateway, file_update(bot_api, voice_note), secret=secret)
    assert response.status_code == status
    assert bot_api.calls == [] and telegram_files(media_root) == [] and spooled(media_root) == []


def test_telegram_is_404_unless_configured(make_gateway: Callable[..., Flask], voice_note: Path) -> None:
    app = make_gateway()  # a public PUBLIC_BASE_URL and no TELEGRAM_*: the channel is off
    assert post_update(app, message_update(USER_ID, text="hi")).status_code == 404


@pytest.mark.parametrize("file_path", ["../../../etc/passwd", "voice/../../x.oga", "/var/lib/telegram/x.oga",
                                       "http://evil.example/x.oga", "https://127.0.0.1/file.oga"])
def test_hostile_file_path_is_refused(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path, file_path: str
) -> None:
    update = file_update(bot_api, voice_note)
    bot_api.file_paths[update["message"]["voice"]["file_id"]] = file_path
    text = reply_text(post_update(telegram_gateway, update))
    assert text.startswith("Sorry, I couldn't download your voice message.")
    assert bot_api.calls == ["getFile"]  # nothing downloaded
    assert telegram_files(media_root) == [] and spooled(media_root) == []


def test_the_same_update_three_times_stores_one_object(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path
) -> None:
    update = file_update(bot_api, voice_note)
    texts = [reply_text(post_update(telegram_gateway, update)) for _ in range(3)]
    assert all(text.startswith("Saved your voice message (") for text in texts)
    assert len(telegram_files(media_root)) == 1
    assert bot_api.calls.count("file") == 1  # the replays find the stored object: nothing fetched again


def test_album_photos_are_each_judged(
    make_gateway: Callable[..., Flask], audio_server: str, vision_server: str, bot_api: LocalBotApi,
    media_root: Path, tmp_path: Path
) -> None:
    from bench.photo_set import face_photo, no_face_photo

    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, VISION_SERVICE_ADDR=vision_server, VISION_RPC_TIMEOUT_S="10",
                       **telegram_env(bot_api))
    face, landscape = tmp_path / "face.jpg", tmp_path / "landscape.jpg"
    face.write_bytes(face_photo())
    landscape.write_bytes(no_face_photo())
    responses = [post_update(app, file_update(bot_api, path, media_group_id="13579"))
                 for path in (face, landscape, face, landscape)]

    texts = [reply_text(response) for response in responses[:2]]
    assert texts[0].startswith("Saved your photo (1 face found).")  # with the privacy notice: first contact
    assert texts[1] == replies.NO_FACE
    # The album's second face photo and second landscape: judged (and the face kept), but not answered again
    # with the same words, so an album of ten selfies is not ten identical messages.
    assert [(r.status_code, r.get_data()) for r in responses[2:]] == [(200, b"")] * 2
    stored = telegram_files(media_root, kind="images")
    assert len(stored) == 2 and all(p.read_bytes() == face.read_bytes() for p in stored)
    another_album = post_update(app, file_update(bot_api, face, media_group_id="24680"))
    assert reply_text(another_album) == "Saved your photo (1 face found)."

    # A photo sent as a file (a document, here a PNG) is judged the same way and kept as it came.
    from io import BytesIO

    from PIL import Image

    png = tmp_path / "face.png"
    with Image.open(BytesIO(face_photo())) as image:
        image.save(png, "PNG")
    assert reply_text(post_update(app, file_update(bot_api, png))) == "Saved your photo (1 face found)."
    assert sorted(p.suffix for p in telegram_files(media_root, kind="images")) == [".jpg"] * 3 + [".png"]


def test_bot_api_down_is_answered_and_the_worker_finishes_and_tells_the_user(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path
) -> None:
    update = file_update(bot_api, voice_note)
    bot_api.fail_with = 502
    text = reply_text(post_update(telegram_gateway, update))
    assert text.startswith(replies.RECEIVED_VOICE)
    assert len(spooled(media_root)) == 1 and telegram_files(media_root) == []

    bot_api.fail_with = None
    services = telegram_gateway.extensions["mediabot"]
    spool = Spool(services.settings.spool_dir)
    for path in spool.directory.glob("*.spool"):
        assert TG_TOKEN not in path.read_text()  # the spool holds the file_id, never the token
    worker = SpoolWorker(spool, Attempts(services.processor, Backoff(0.01, 0.02), 3600), poll_s=0.01,
                         attempt_budget_s=20, deferred=services.deferred)
    spool_entry = spool.lease(spooled(media_root)[0])
    assert spool_entry is not None
    spool_entry.record_retry({0: "download_failed"}, 0)  # due now
    spool_entry.release()
    assert worker.run_once() == 1
    assert len(telegram_files(media_root)) == 1 and spooled(media_root) == []
    (sent,) = bot_api.sent
    assert sent["chat_id"] == USER_ID and sent["text"].startswith("Saved your voice message (")
    assert sent["reply_parameters"]["message_id"] == update["message"]["message_id"]


def test_bot_api_unreachable_is_answered_and_spooled(
    make_gateway: Callable[..., Flask], audio_server: str, bot_api: LocalBotApi, media_root: Path,
    voice_note: Path
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server,
                       **telegram_env(bot_api, TELEGRAM_API_BASE_URL=f"http://{closed_port_addr()}"))
    text = reply_text(post_update(app, file_update(bot_api, voice_note)))
    assert text.startswith(replies.RECEIVED_VOICE)
    assert len(spooled(media_root)) == 1


def test_the_token_never_reaches_logs_replies_or_the_spool_of_a_failing_run(
    make_gateway: Callable[..., Flask], audio_server: str, bot_api: LocalBotApi, media_root: Path,
    voice_note: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, LOG_LEVEL="DEBUG", **telegram_env(bot_api))
    bodies = []
    for failure in ("hostile", 500, 401, None):
        update = file_update(bot_api, voice_note)
        bot_api.fail_with = failure if isinstance(failure, int) else None
        if failure == "hostile":
            bot_api.file_paths[update["message"]["voice"]["file_id"]] = "../secret"
        bodies.append(post_update(app, update).get_data(as_text=True))
    bot_api.fail_with = None
    unreachable = make_gateway(AUDIO_SERVICE_ADDR=audio_server,
                               **telegram_env(bot_api, TELEGRAM_API_BASE_URL=f"http://{closed_port_addr()}"))
    bodies.append(post_update(unreachable, file_update(bot_api, voice_note)).get_data(as_text=True))

    assert "getFile" in caplog.text  # the Bot API calls were logged (urllib3, at DEBUG) ...
    assert TG_TOKEN not in caplog.text  # ... with the token masked
    assert TG_TOKEN.split(":")[1] not in caplog.text
    assert not any(TG_TOKEN in body for body in bodies)
    spool_dir = media_root.parent / "spool"
    assert not any(TG_TOKEN in p.read_text() for p in spool_dir.rglob("*.spool"))
    assert not any(TG_TOKEN in p.read_text() for p in media_root.rglob("*.json"))


def test_privacy_commands_see_and_erase_only_the_telegram_senders_data(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path
) -> None:
    from datetime import UTC, datetime

    from gateway.storage.keys import AUDIO, MediaRef

    post_update(telegram_gateway, file_update(bot_api, voice_note))
    # A WhatsApp user whose number has the same digits as the Telegram user's id.
    store = telegram_gateway.extensions["mediabot"].store
    assert SENDER_ID == str(USER_ID)
    theirs, _ = store.put(MediaRef(SENDER_ID, AUDIO, "MM" + "ab" * 16, 0), b"RIFF", content_type="audio/wav",
                          metadata={}, received_at=datetime.now(UTC))

    mine = reply_text(post_update(telegram_gateway, message_update(USER_ID, text="/mydata")))
    assert mine.startswith("I keep 1 voice message and 0 photos") and "/delete" in mine
    ask = reply_text(post_update(telegram_gateway, message_update(USER_ID, text="/delete")))
    assert "/delete_all" in ask
    done = reply_text(post_update(telegram_gateway, message_update(USER_ID, text="/delete_all")))
    assert done.startswith("Done: I erased 1 file")
    assert telegram_files(media_root) == [] and store.marker("erased", TG_SENDER) is not None
    assert store.marker("erased", SENDER_ID) is None
    assert [o.key for o in store.list(SENDER_ID)] == [theirs.key]
    assert theirs.key.startswith(f"whatsapp/{SENDER_ID}/")


def test_edited_message_is_ignored_politely(telegram_gateway: Flask, bot_api: LocalBotApi, voice_note: Path) -> None:
    update = file_update(bot_api, voice_note)
    update["edited_message"] = update.pop("message")
    response = post_update(telegram_gateway, update)
    assert response.status_code == 200 and response.get_data() == b""
    assert bot_api.calls == []


@pytest.mark.parametrize("update", [
    {"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"},
                                 "from": {"id": "5", "is_bot": False, "first_name": "x"}, "text": "hi"}},
    {"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"},
                                 "from": {"id": -5, "is_bot": False, "first_name": "x"}, "text": "hi"}},
    {"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": 5, "type": "private"},
                                 "from": {"id": 5, "is_bot": False, "first_name": "x"},
                                 "voice": {"file_id": "../../x", "file_unique_id": "u", "duration": 1}}},
    {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 5, "type": "private"}}},
])
def test_hostile_updates_get_a_clear_reply_and_nothing_is_fetched(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, update: dict
) -> None:
    response = post_update(telegram_gateway, update)
    assert response.status_code == 200
    assert response.get_json()["text"] in (replies.INVALID_SENDER, replies.INVALID_MESSAGE)
    assert bot_api.calls == [] and list(media_root.rglob("*.wav")) == [] and spooled(media_root) == []


def test_development_secret_is_answered_for_this_machine_only(
    make_gateway: Callable[..., Flask], bot_api: LocalBotApi
) -> None:
    from gateway.config import DEV_TELEGRAM_WEBHOOK_SECRET

    app = make_gateway(PUBLIC_BASE_URL="http://127.0.0.1:8080", TELEGRAM_API_BASE_URL=bot_api.base_url)
    assert app.extensions["mediabot"].settings.telegram_dev_credentials
    update = message_update(USER_ID, text="/start")
    assert post_update(app, update, secret=DEV_TELEGRAM_WEBHOOK_SECRET, remote_addr="127.0.0.1").status_code == 200
    assert post_update(app, update, secret=DEV_TELEGRAM_WEBHOOK_SECRET, remote_addr="10.1.2.3").status_code == 403


def test_the_largest_photo_size_within_the_cap_is_fetched(
    make_gateway: Callable[..., Flask], audio_server: str, bot_api: LocalBotApi, media_root: Path
) -> None:
    from gateway.telegram.updates import parse_update

    sizes = [{"file_id": f"AgAC{name}", "file_unique_id": name, "width": w, "height": w, "file_size": size}
             for name, w, size in (("small", 90, 2_000), ("large", 1280, 300_000), ("medium", 320, 40_000))]
    update = message_update(USER_ID, photo=sizes)
    assert parse_update(update, max_photo_bytes=100_000, id_key="k").inbound.media[0].url == "telegram-file:AgACmedium"
    assert parse_update(update, max_photo_bytes=10**6, id_key="k").inbound.media[0].url == "telegram-file:AgAClarge"
    assert parse_update(update, max_photo_bytes=1_000, id_key="k").inbound.media[0].url == "telegram-file:AgACsmall"


def test_an_oversized_file_is_refused_before_downloading(
    make_gateway: Callable[..., Flask], audio_server: str, bot_api: LocalBotApi, media_root: Path, voice_note: Path
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, MAX_MEDIA_BYTES="1000", **telegram_env(bot_api))
    text = reply_text(post_update(app, file_update(bot_api, voice_note)))
    assert text.startswith("Your voice message is too big for me")
    assert bot_api.calls == ["getFile"] and telegram_files(media_root) == []


def test_album_replies_forget_after_their_time_and_stay_bounded() -> None:
    from gateway.telegram.webhook import AlbumReplies

    albums = AlbumReplies(ttl_s=60, max_albums=2)
    assert albums.first(1, "a", "saved", now=0) and not albums.first(1, "a", "saved", now=1)
    assert albums.first(1, "a", "no face", now=2) and albums.first(2, "a", "saved", now=2)  # another chat
    assert albums.first(1, "a", "saved", now=61)  # a minute later the album is forgotten
    albums.first(3, "b", "x", now=62)
    albums.first(4, "c", "x", now=62)
    assert len(albums._said) <= 3  # noqa: SLF001 - bounded: the oldest albums go first


def test_privacy_commands_in_a_group_are_sent_to_a_private_chat(telegram_gateway: Flask, media_root: Path) -> None:
    from gateway.telegram.webhook import PRIVATE_ONLY

    for text in ("/mydata", "/delete", "/delete_all@mediabot_local_bot", "MY DATA"):
        update = message_update(USER_ID, chat_id=-1001234567890, text=text)
        assert reply_text(post_update(telegram_gateway, update)) == PRIVATE_ONLY
    assert not (media_root / ".mediabot" / "markers" / "erase_requested").exists()


def test_erasing_removes_the_senders_spooled_telegram_messages_and_nobody_elses(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_root: Path, voice_note: Path
) -> None:
    bot_api.fail_with = 502
    for user in (USER_ID, USER_ID + 1):
        assert reply_text(post_update(telegram_gateway, file_update(bot_api, voice_note, user_id=user))).startswith(
            replies.RECEIVED_VOICE)
    assert len(spooled(media_root)) == 2
    reply_text(post_update(telegram_gateway, message_update(USER_ID, text="/delete")))
    assert reply_text(post_update(telegram_gateway, message_update(USER_ID, text="/delete_all"))).startswith("Done:")
    (left,) = spooled(media_root)
    assert str(USER_ID + 1) in (media_root.parent / "spool" / f"{left}.spool").read_text()


def test_a_file_download_redirected_elsewhere_is_not_followed(
    telegram_gateway: Flask, bot_api: LocalBotApi, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    """Only TELEGRAM_API_BASE_URL's host is fetched: a redirect (to another host, which would see the request
    the token's URL led to) is a failure, not a hop."""
    elsewhere = media_server.add("/elsewhere.oga", body=voice_note.read_bytes(), content_type="audio/ogg",
                                 require_auth=False)
    update = file_update(bot_api, voice_note)
    bot_api.redirects[update["message"]["voice"]["file_id"]] = elsewhere
    text = reply_text(post_update(telegram_gateway, update))
    assert text.startswith("Sorry, I couldn't download your voice message.")
    assert bot_api.calls == ["getFile", "file"] and media_server.requests_for("/elsewhere.oga") == []
    assert telegram_files(media_root) == [] and spooled(media_root) == []
