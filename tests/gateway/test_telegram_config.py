"""TELEGRAM_*: on when both are set, development values only where nobody else can reach the gateway."""

from __future__ import annotations

import logging

import pytest

from gateway import GatewayStartupError, create_app
from gateway.config import (
    DEFAULT_TELEGRAM_API_BASE_URL,
    DEV_TELEGRAM_API_BASE_URL,
    DEV_TELEGRAM_BOT_TOKEN,
    DEV_TELEGRAM_WEBHOOK_SECRET,
    Settings,
)
from mediabot.config import ConfigError

REAL = {"TWILIO_ACCOUNT_SID": "AC" + "1f" * 16, "TWILIO_AUTH_TOKEN": "secret"}
PUBLIC = {**REAL, "PUBLIC_BASE_URL": "https://bot.example.com"}
BOT = {"TELEGRAM_BOT_TOKEN": "123456789:AAHk-real_token", "TELEGRAM_WEBHOOK_SECRET": "s3cret_-X"}


def test_off_without_telegram_variables_on_a_public_url() -> None:
    s = Settings.from_env(PUBLIC)
    assert not s.telegram_enabled and not s.telegram_dev_credentials


def test_a_real_bot() -> None:
    s = Settings.from_env({**PUBLIC, **BOT})
    assert s.telegram_enabled and not s.telegram_dev_credentials
    assert s.telegram_api_base_url == DEFAULT_TELEGRAM_API_BASE_URL
    assert "AAHk" not in repr(s) and "s3cret" not in repr(s)
    s = Settings.from_env({**PUBLIC, **BOT, "TELEGRAM_API_BASE_URL": "https://botapi.internal.example:8443/"})
    assert s.telegram_api_base_url == "https://botapi.internal.example:8443"


def test_development_values_on_a_loopback_url_only(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings.from_env(REAL)  # PUBLIC_BASE_URL defaults to http://127.0.0.1:8080
    assert s.telegram_enabled and s.telegram_dev_credentials
    assert (s.telegram_bot_token, s.telegram_webhook_secret) == (DEV_TELEGRAM_BOT_TOKEN, DEV_TELEGRAM_WEBHOOK_SECRET)
    assert s.telegram_api_base_url == DEV_TELEGRAM_API_BASE_URL
    with caplog.at_level(logging.WARNING):
        s.log_development_warning()
    assert "DEVELOPMENT TELEGRAM CREDENTIALS" in caplog.text
    assert not Settings.from_env({**REAL, "TRUST_PROXY": "1", "PUBLIC_BASE_URL": "http://127.0.0.1:8080"}).telegram_enabled


@pytest.mark.parametrize("env", [
    {"TELEGRAM_BOT_TOKEN": DEV_TELEGRAM_BOT_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "real-secret"},
    {"TELEGRAM_BOT_TOKEN": "1:real", "TELEGRAM_WEBHOOK_SECRET": DEV_TELEGRAM_WEBHOOK_SECRET},
])
def test_development_values_are_refused_on_a_public_url(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="development Telegram"):
        Settings.from_env({**PUBLIC, **env})


def test_the_development_token_goes_to_a_loopback_bot_api_only() -> None:
    with pytest.raises(ConfigError, match="only goes to a Bot API on this machine"):
        Settings.from_env({**REAL, "TELEGRAM_API_BASE_URL": "https://api.telegram.org"})


@pytest.mark.parametrize(("env", "match"), [
    ({"TELEGRAM_BOT_TOKEN": "1:abc"}, "set both"),
    ({"TELEGRAM_WEBHOOK_SECRET": "abc"}, "set both"),
    ({**BOT, "TELEGRAM_BOT_TOKEN": "not a token"}, "TELEGRAM_BOT_TOKEN must be the token BotFather gave you"),
    ({**BOT, "TELEGRAM_WEBHOOK_SECRET": "has spaces in it"}, "1-256 characters"),
    ({**BOT, "TELEGRAM_WEBHOOK_SECRET": "x" * 257}, "1-256 characters"),
    ({**BOT, "TELEGRAM_API_BASE_URL": "http://api.telegram.org"}, "must be https"),
    ({**BOT, "TELEGRAM_API_BASE_URL": "https://api.telegram.org/bot1:x"}, "scheme://host"),
    ({**BOT, "TELEGRAM_API_BASE_URL": "ftp://x"}, "scheme://host"),
    ({**BOT, "TELEGRAM_BOT_TOKEN": "REPLACE_ME_token"}, "placeholder"),
])
def test_bad_telegram_values_are_refused_with_the_variable_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env({**PUBLIC, **env})


def test_the_app_refuses_to_start_on_them(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(GatewayStartupError, match="TELEGRAM_BOT_TOKEN"):
        create_app({**PUBLIC, "MEDIA_ROOT": tmp_path, "SPOOL_DIR": tmp_path / "spool", "TELEGRAM_BOT_TOKEN": "1:x"})
