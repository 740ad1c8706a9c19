"""The Telegram commands people run: `python -m gateway.telegram` against a Bot API, and the simulator
against a gateway served over real HTTP (its own local Bot API, real-shaped updates, the reply printed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gateway.telegram import simulate as telegram_simulate
from gateway.telegram import __main__ as telegram_cli
from gateway.telegram.simulate import LocalBotApi
from tests.fixtures.gateway import PUBLIC_BASE_URL, free_port
from tests.fixtures.telegram import TG_SECRET, TG_TOKEN, telegram_env, telegram_files


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, bot_api: LocalBotApi) -> None:
    for name, value in {**telegram_env(bot_api), "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
                        "TWILIO_ACCOUNT_SID": "AC" + "1f" * 16, "TWILIO_AUTH_TOKEN": "x"}.items():
        monkeypatch.setenv(name, str(value))


def test_set_webhook_info_and_delete(cli_env: None, bot_api: LocalBotApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert telegram_cli.main(["set-webhook", "--drop-pending-updates"]) == 0
    assert bot_api.webhook["url"] == PUBLIC_BASE_URL + "/telegram"
    assert bot_api.webhook["secret_token"] == TG_SECRET
    assert bot_api.webhook["allowed_updates"] == ["message"]
    assert telegram_cli.main(["info"]) == 0
    assert f"url: {PUBLIC_BASE_URL}/telegram" in capsys.readouterr().out
    assert telegram_cli.main(["delete-webhook"]) == 0
    assert bot_api.webhook == {}
    assert TG_TOKEN not in capsys.readouterr().out


def test_a_refusal_or_an_unreachable_bot_api_is_reported_without_the_token(
    cli_env: None, bot_api: LocalBotApi, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bot_api.fail_with = 401
    assert telegram_cli.main(["info"]) == 1
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", f"http://127.0.0.1:{free_port()}")
    assert telegram_cli.main(["set-webhook"]) == 1
    err = capsys.readouterr().err
    assert "Telegram refused: 401" in err and "could not reach the Bot API" in err
    assert TG_TOKEN not in err and TG_TOKEN.split(":")[1] not in err


def test_simulator_plays_telegram_against_a_served_gateway(
    make_gateway: Callable[..., Flask], serve_gateway: Callable[[Flask], str], audio_server: str,
    monkeypatch: pytest.MonkeyPatch, media_root: Path, voice_note: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api_base = f"http://127.0.0.1:{free_port()}"
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, TELEGRAM_BOT_TOKEN=TG_TOKEN,
                       TELEGRAM_WEBHOOK_SECRET=TG_SECRET, TELEGRAM_API_BASE_URL=api_base)
    url = serve_gateway(app) + "/telegram"
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TG_TOKEN)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", TG_SECRET)
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", api_base)

    # This gateway has no vision service: the simulator waits for it as long as --wait says, names it,
    # then sends anyway (a voice note needs only audio).
    code = telegram_simulate.main(["--wait", "0.3", "--from", "777000", "--url", url, str(voice_note)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "waiting up to 0.3 s for vision" in err
    assert out.startswith("Saved your voice message (")
    assert len(telegram_files(media_root, user_id=777000, kind="audio")) == 1
    assert telegram_simulate.main(["--wait", "0", "--from", "777000", "--url", url, "--text", "/mydata"]) == 0
    assert capsys.readouterr().out.startswith("I keep 1 voice message and 0 photos")

    # The operator's view: `gateway.media list --sender telegram:ID` shows it, and only it.
    from gateway import media

    monkeypatch.setenv("MEDIA_ROOT", str(media_root))
    monkeypatch.setenv("STORAGE", "filesystem")
    assert media.main(["list", "--sender", "telegram:777000"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 2 and listing[1].startswith("telegram/777000/audio/") and listing[1].split()[2] != "?"
    assert media.main(["list", "--sender", "777000"]) == 0
    assert "nothing stored" in capsys.readouterr().out
