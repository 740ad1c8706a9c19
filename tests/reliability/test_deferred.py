"""Deferred answers and the poison cap, end to end: the real app, a real audio service, Twilio's Messages API on
loopback (tests/fixtures/twilio_api.py), the real spool worker.

A voice note the webhook could not finish is answered "I'll save it shortly"; when the worker finishes it, the
user is sent how it ended, once, from the address they wrote to; a message that keeps failing is given up
after INTAKE_MAX_ATTEMPTS attempts with a final sentence, and never tried again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gateway import replies
from gateway.intake.spool import Spool
from gateway.whatsapp.simulate import DEFAULT_TO
from tests.fixtures.gateway import SENDER, MediaServer, media_files, media_form, reply_of, signed_post, spooled
from tests.fixtures.twilio_api import TwilioMessagesApi
from tests.reliability.test_worker import worker_for


def run_until_empty(worker, media_root: Path, timeout_s: float = 30.0) -> None:  # noqa: ANN001 (SpoolWorker)
    deadline = time.monotonic() + timeout_s
    while spooled(media_root) and time.monotonic() < deadline:
        worker.run_once()
        time.sleep(0.05)
    assert spooled(media_root) == []


def test_a_deferred_voice_note_is_stored_and_the_user_told_once_through_twilio(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path, twilio_api: TwilioMessagesApi,
) -> None:
    app = make_gateway(TWILIO_API_BASE_URL=twilio_api.base_url)  # the audio service is down for the webhook
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    assert twilio_api.sent == []  # the webhook's TwiML said it; nothing deferred yet

    worker = worker_for(app, audio_addr=audio_server, tell=True)  # the service is back
    run_until_empty(worker, media_root)
    assert [p.suffix for p in media_files(media_root)] == [".wav", ".json"]
    (sent,) = twilio_api.sent
    # From and To swapped: from the number the user wrote to, to the user.
    assert (sent.from_, sent.to) == (DEFAULT_TO, f"whatsapp:{SENDER}")
    assert sent.body.startswith("Saved your voice message (") and sent.body.endswith(" s).")
    for _ in range(3):  # nothing left to do, nothing said again
        assert worker.run_once() == 0
    assert len(twilio_api.sent) == 1 and twilio_api.requests == 1


def test_a_worker_that_died_before_telling_tells_on_the_next_pass_and_once_told_never_again(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path, twilio_api: TwilioMessagesApi,
) -> None:
    """The entry keeps the sentence until "told" is recorded: a crash after the item was stored and before the
    send loses nothing, and an entry whose answer was sent is not answered again."""
    app = make_gateway(TWILIO_API_BASE_URL=twilio_api.base_url)
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    spool = Spool(app.extensions["mediabot"].settings.spool_dir)
    # What a worker leaves when it dies between recording the outcome and sending it (attempt.py, step 1).
    lease = spool.lease(form["MessageSid"])
    assert lease is not None
    lease.record_retry({0: "unavailable"}, 0)  # due now
    lease.record_final(0, "saved", tell="Saved your voice message (4.2 s).")
    lease.release()

    worker = worker_for(app, audio_addr=audio_server, tell=True)
    assert worker.run_once() == 1
    assert [m.body for m in twilio_api.sent] == ["Saved your voice message (4.2 s)."]
    assert spooled(media_root) == []

    # Told, then died before the entry was deleted (step 3 done, not step 4): nothing is sent again.
    second = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), second)) == replies.RECEIVED_VOICE
    lease = spool.lease(second["MessageSid"])
    assert lease is not None
    lease.record_retry({0: "unavailable"}, 0)
    lease.record_final(0, "saved", tell="Saved your voice message (4.2 s).")
    lease.record_told()
    lease.release()
    assert worker.run_once() == 1
    assert len(twilio_api.sent) == 1 and spooled(media_root) == []


def test_twilio_refusing_the_answer_is_logged_and_the_entry_still_completes(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path, twilio_api: TwilioMessagesApi, caplog,  # noqa: ANN001
) -> None:
    app = make_gateway(TWILIO_API_BASE_URL=twilio_api.base_url)
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    twilio_api.fail_with = 500
    run_until_empty(worker_for(app, audio_addr=audio_server, tell=True), media_root)
    assert [p.suffix for p in media_files(media_root)] == [".wav", ".json"]  # stored either way
    assert twilio_api.requests == 1 and twilio_api.sent == []
    (line,) = [r for r in caplog.records if r.getMessage() == "could not tell the WhatsApp user the outcome"]
    assert line.error == "Twilio answered 500 (error 20500)" and line.message_sid == form["MessageSid"]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert SENDER.lstrip("+") not in logged and "gateway-tests-auth-token" not in logged


def test_the_poison_cap_gives_up_with_a_final_answer_and_retries_nothing(
    make_gateway: Callable[..., Flask], media_server: MediaServer, media_root: Path, voice_note: Path,
    twilio_api: TwilioMessagesApi,
) -> None:
    """The audio service never answers (nothing listens on its port): after INTAKE_MAX_ATTEMPTS attempts, the
    webhook's counted, the item is given up, the user hears so once, and the entry moves to failed/."""
    app = make_gateway(TWILIO_API_BASE_URL=twilio_api.base_url, INTAKE_MAX_ATTEMPTS="3")
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE  # attempt 1
    settings = app.extensions["mediabot"].settings
    worker = worker_for(app, max_attempts=settings.intake_max_attempts, tell=True)  # audio still down
    spool = Spool(settings.spool_dir)
    attempts = 1
    deadline = time.monotonic() + 30
    while spool.depth() and time.monotonic() < deadline:
        attempts += worker.run_once()
        time.sleep(0.05)
    assert attempts == 3 and spool.depth() == 0
    assert [p.stem for p in spool.failed()] == [form["MessageSid"]]
    assert '"outcome":"gave_up"' in spool.failed()[0].read_text()  # for the person reading failed/
    assert [m.body for m in twilio_api.sent] == [replies.GAVE_UP_VOICE]
    assert media_server.routes["/media/voice"].hits == 3
    time.sleep(0.1)
    for _ in range(3):
        assert worker.run_once() == 0  # nothing is retried
    assert media_server.routes["/media/voice"].hits == 3 and len(twilio_api.sent) == 1
    assert media_files(media_root) == []


def test_the_give_up_time_also_ends_with_the_final_answer(
    make_gateway: Callable[..., Flask], media_server: MediaServer, media_root: Path, voice_note: Path,
    twilio_api: TwilioMessagesApi,
) -> None:
    app = make_gateway(TWILIO_API_BASE_URL=twilio_api.base_url)
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    worker = worker_for(app, give_up_after_s=0.5, tell=True)
    time.sleep(1.1)  # past the give-up time and the webhook's first backoff
    assert worker.run_once() == 1
    assert [m.body for m in twilio_api.sent] == [replies.GAVE_UP_VOICE]
    assert [p.stem for p in Spool(media_root.parent / "spool").failed()] == [form["MessageSid"]]


def test_development_credentials_log_the_whatsapp_answer_instead_of_sending_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`make run` has no Twilio account to send from: the answer is logged, without the number."""
    from gateway.config import Settings
    from gateway.deferred import make_deferred_replies
    from gateway.intake import ItemAnswer
    from gateway.outcome import Outcome
    from gateway.whatsapp.form import parse_webhook

    settings = Settings.from_env({})  # the development credentials, no TWILIO_API_BASE_URL
    assert settings.dev_credentials and settings.twilio_api_base_url == ""
    message = parse_webhook(media_form([("http://127.0.0.1:9/x", "audio/ogg")]))
    assert message.whatsapp is not None and message.whatsapp.user == f"whatsapp:{SENDER}"
    with caplog.at_level(logging.INFO, logger="gateway.whatsapp.notify"):
        sent = make_deferred_replies(settings, None).tell(message, [ItemAnswer("Saved your voice message (4.2 s).",
                                                                               Outcome.SAVED)])
    assert sent is False
    (line,) = [r for r in caplog.records if r.getMessage().startswith("development mode")]
    assert "Saved your voice message (4.2 s)." in line.getMessage()
    assert SENDER.lstrip("+") not in line.getMessage()
