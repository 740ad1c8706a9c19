"""Secrets never reach a log line or a reply, and phone numbers are logged masked, even when things fail.

Each test runs a failing scenario with every logger captured at DEBUG (urllib3 and the MinIO SDK
included), renders each record the way production does (mediabot.logs.JsonFormatter, tracebacks too)
and searches the text for the secrets and the sender's full number.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from flask import Flask

from mediabot.logs import JsonFormatter
from tests.fixtures.gateway import (
    SENDER_ID,
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    MediaServer,
    media_form,
    signed_post,
)
from gateway.telegram.simulate import LocalBotApi
from tests.fixtures.s3 import SECRET_KEY, SeaweedS3, new_bucket_name
from tests.fixtures.telegram import TG_SECRET, TG_TOKEN, USER_ID, file_update, post_update, telegram_env

BASIC_AUTH = base64.b64encode(f"{TEST_ACCOUNT_SID}:{TEST_AUTH_TOKEN}".encode()).decode()


def rendered(records: Iterable[logging.LogRecord]) -> str:
    formatter = JsonFormatter("gateway")
    return "\n".join(formatter.format(record) for record in records)


def assert_clean(text: str, *secrets: str) -> None:
    for secret in (TEST_AUTH_TOKEN, BASIC_AUTH, *secrets):
        assert secret not in text, f"secret {secret[:6]}... leaked"
    # The number appears only masked (all but the last 4 digits hidden).
    assert SENDER_ID not in text
    assert SENDER_ID[3:] not in text


def test_failed_webhooks_log_no_token_and_no_full_number(
    make_gateway: Callable[..., Flask], media_server: MediaServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_gateway().test_client()
    refused = media_server.add("/refused", statuses=(401,), require_auth=False)
    broken = media_server.add("/broken", statuses=(500,))
    replies = [
        signed_post(client, media_form([(refused, "audio/ogg")])),  # the media host refuses our credentials
        signed_post(client, media_form([(broken, "image/jpeg")])),  # the media host fails
        signed_post(client, media_form([(media_server.url("/m"), "audio/ogg")]), token="wrong-token"),
        signed_post(client, media_form([], WaId="12")),  # an invalid sender id
        signed_post(client, media_form([(media_server.url("/gone"), "audio/ogg")])),  # 404 after retries
    ]
    assert [r.status_code for r in replies] == [200, 200, 403, 200, 200]
    assert_clean(rendered(caplog.records) + "".join(r.get_data(as_text=True) for r in replies))
    # The masked form is what is logged: the last four digits only.
    senders = {getattr(r, "sender") for r in caplog.records if hasattr(r, "sender")}
    assert senders and all(s.endswith(SENDER_ID[-4:]) and set(s[:-4]) == {"*"} for s in senders), senders


def test_refused_storage_credentials_are_not_repeated(
    make_gateway: Callable[..., Flask], s3_server: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary_secret = "canary-secret-0f9d8c7b6a5e4d3c2b1a"
    env = s3_server.gateway_env(new_bucket_name(), MINIO_ACCESS_KEY="canary-access-key",
                                MINIO_SECRET_KEY=canary_secret)
    app = make_gateway(**env)  # starts; the refusal is logged, and reported by /readyz
    readyz = app.test_client().get("/readyz").get_data(as_text=True)
    refusals = [r for r in caplog.records if r.getMessage().startswith("storage refuses the gateway")]
    assert refusals and "ACCESS_DENIED" in readyz  # something to leak was written, and nothing leaked
    assert_clean(rendered(caplog.records) + readyz, canary_secret)


def test_storage_down_mid_run_logs_no_keys(
    make_gateway: Callable[..., Flask], running_s3: SeaweedS3, media_server: MediaServer, audio_server: str,
    voice_note: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_gateway(**running_s3.gateway_env(new_bucket_name()), AUDIO_SERVICE_ADDR=audio_server,
                       MINIO_RETRIES="0", MINIO_CONNECT_TIMEOUT_S="0.5")
    caplog.set_level(logging.DEBUG)
    running_s3.kill()
    url = media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    response = signed_post(app.test_client(), media_form([(url, "audio/ogg")]))
    assert response.status_code == 200
    # The failure was logged (so there was something to leak), and nothing leaked.
    assert any(r.levelno >= logging.WARNING for r in caplog.records)
    assert_clean(rendered(caplog.records) + response.get_data(as_text=True), SECRET_KEY)
    assert app.test_client().get("/readyz").json["dependencies"]["storage"] == "UNAVAILABLE"


def test_a_failing_filesystem_store_does_not_log_the_number_in_its_paths(
    make_gateway: Callable[..., Flask], media_server: MediaServer, media_root: Path, audio_server: str,
    voice_note: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Stored keys start with the sender's number, and an OSError's message names the path it failed on."""
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server)
    media_root.mkdir(parents=True, exist_ok=True)
    (media_root / "whatsapp").mkdir(exist_ok=True)
    (media_root / "whatsapp" / SENDER_ID).write_text("a file where the sender's directory should be")
    caplog.set_level(logging.DEBUG)
    url = media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    response = signed_post(app.test_client(), media_form([(url, "audio/ogg")]))
    assert response.status_code == 200
    assert any(r.levelno >= logging.WARNING for r in caplog.records)
    assert_clean(rendered(caplog.records) + response.get_data(as_text=True))


def test_failing_telegram_updates_log_no_token_no_secret_and_no_full_user_id(
    make_gateway: Callable[..., Flask], audio_server: str, bot_api: LocalBotApi, media_root: Path,
    voice_note: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The bot token is in every Bot API URL; the user id (the same digits as SENDER_ID here) names the
    folder, and in a private chat is the chat id too: none of them may appear whole in a log line."""
    caplog.set_level(logging.DEBUG)
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, **telegram_env(bot_api))
    updates = [file_update(bot_api, voice_note) for _ in range(4)]
    bot_api.file_paths[updates[0]["message"]["voice"]["file_id"]] = "../../etc/passwd"
    bodies = [post_update(app, updates[0]).get_data(as_text=True)]
    bot_api.fail_with = 500
    bodies.append(post_update(app, updates[1]).get_data(as_text=True))
    bot_api.fail_with = None
    # A store that fails on the sender's folder, so an OSError naming the path is logged.
    (media_root / "telegram").mkdir(parents=True, exist_ok=True)
    (media_root / "telegram" / str(USER_ID)).write_text("a file where the sender's directory should be")
    bodies.append(post_update(app, updates[2]).get_data(as_text=True))
    bodies.append(post_update(app, updates[3], secret="wrong").get_data(as_text=True))
    assert any(r.levelno >= logging.WARNING for r in caplog.records)
    assert "getFile" in rendered(caplog.records)
    assert_clean(rendered(caplog.records), TG_TOKEN, TG_TOKEN.split(":")[1], TG_SECRET)
    # The answers name the chat (Telegram must know where to send them), never the token or the secret.
    assert not any(secret in body for body in bodies for secret in (TG_TOKEN.split(":")[1], TG_SECRET))
