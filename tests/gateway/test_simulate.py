"""The simulator: Twilio's side of a webhook, against the gateway over real HTTP and as `make run` starts it."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gateway.whatsapp import simulate
from gateway.config import DEV_ACCOUNT_SID
from tests.fixtures.gateway import (
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    WEBHOOK_URL,
    Stack,
    free_port,
    media_files,
)

SAVED = re.compile(r"Saved your voice message \(\d+\.\d s\)\.")


def test_webhook_form_has_the_whatsapp_fields() -> None:
    form = simulate.webhook_form(
        message_sid=simulate.new_sid("MM"), account_sid=DEV_ACCOUNT_SID, from_number="+15551234567",
        media=[("http://h/0", "audio/ogg"), ("http://h/1", "image/jpeg")], profile_name="Ana", body="hi",
    )
    assert re.fullmatch(r"MM[0-9a-f]{32}", form["MessageSid"]) and form["SmsMessageSid"] == form["MessageSid"]
    assert re.fullmatch(r"AC[0-9a-f]{32}", form["AccountSid"])
    assert form["From"] == "whatsapp:+15551234567" and form["WaId"] == "15551234567"
    assert form["To"].startswith("whatsapp:+")
    assert (form["NumMedia"], form["MessageType"], form["ProfileName"], form["Body"]) == ("2", "audio", "Ana", "hi")
    assert (form["MediaUrl1"], form["MediaContentType1"]) == ("http://h/1", "image/jpeg")


@pytest.mark.parametrize(
    ("types", "kind"),
    [([], "text"), (["audio/ogg"], "audio"), (["image/png"], "image"), (["video/mp4"], "video"),
     (["application/pdf"], "document")],
)
def test_message_type(types: list[str], kind: str) -> None:
    assert simulate.message_type(types) == kind


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("v.ogg", "audio/ogg"), ("v.opus", "audio/ogg"), ("a.m4a", "audio/mp4"), ("a.amr", "audio/amr"),
     ("p.JPG", "image/jpeg"), ("p.webp", "image/webp"), ("x.unknownext", "application/octet-stream")],
)
def test_content_type_guess(name: str, content_type: str) -> None:
    assert simulate.guess_content_type(Path(name)) == content_type


def test_media_host_wants_the_account_credentials(tmp_path: Path) -> None:
    media = tmp_path / "v.ogg"
    media.write_bytes(b"OggS-data")
    with simulate.serve_media(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN) as host:
        url = host.add(TEST_ACCOUNT_SID, simulate.new_sid("MM"), media, "audio/ogg")
        path = rf"/2010-04-01/Accounts/{TEST_ACCOUNT_SID}/Messages/MM[0-9a-f]{{32}}/Media/ME[0-9a-f]{{32}}"
        assert re.search(path + "$", url)

        def get(user: str, password: str) -> urllib.request.Request:
            request = urllib.request.Request(url)
            import base64

            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
            return request

        for user, password in [(TEST_ACCOUNT_SID, "wrong"), ("ACother", TEST_AUTH_TOKEN)]:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(get(user, password), timeout=5)
            assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(url, timeout=5)
        assert anonymous.value.code == 401
        with urllib.request.urlopen(get(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN), timeout=5) as response:
            assert response.read() == b"OggS-data"
            assert response.headers["Content-Type"] == "audio/ogg"


def test_send_to_a_gateway_known_by_its_public_url(
    gateway_app: Flask, serve_gateway: Callable[[Flask], str], voice_note: Path, media_root: Path
) -> None:
    """The gateway believes it is https://bot.example.test: the simulator posts locally and signs for that."""
    base = serve_gateway(gateway_app)
    result = simulate.send(
        [voice_note], url=f"{base}/whatsapp", sign_url=WEBHOOK_URL,
        account_sid=TEST_ACCOUNT_SID, auth_token=TEST_AUTH_TOKEN, from_number="+447700900123",
    )
    assert result.status == 200, result.body
    assert SAVED.fullmatch(result.reply_text)
    assert result.elapsed_s > 0
    assert result.message_sid.startswith("MM")
    (wav,) = (media_root / "whatsapp" / "447700900123" / "audio").glob("*.wav")
    assert result.message_sid in wav.name

    replay = simulate.send(
        [voice_note], url=f"{base}/whatsapp", sign_url=WEBHOOK_URL, account_sid=TEST_ACCOUNT_SID,
        auth_token=TEST_AUTH_TOKEN, from_number="+447700900123", message_sid=result.message_sid,
    )
    assert replay.reply_text == result.reply_text
    assert len(media_files(media_root)) == 2


def test_send_with_development_defaults_on_both_sides(
    make_gateway: Callable[..., Flask], audio_server: str, serve_gateway: Callable[..., str], voice_note: Path,
    media_root: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh checkout: no credentials, no public URL, anywhere; only the port is chosen for the test."""
    port = free_port()
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_PORT", str(port))
    app = make_gateway(
        AUDIO_SERVICE_ADDR=audio_server, TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN="", PUBLIC_BASE_URL="",
        MEDIA_HOST_ALLOWLIST="", GATEWAY_PORT=port,
    )
    assert app.extensions["mediabot"].settings.dev_credentials
    serve_gateway(app, port)
    result = simulate.send([voice_note])
    assert result.status == 200 and SAVED.fullmatch(result.reply_text), result.body
    assert len(media_files(media_root)) == 2


def test_text_message(gateway_app: Flask, serve_gateway: Callable[[Flask], str]) -> None:
    base = serve_gateway(gateway_app)
    result = simulate.send([], url=f"{base}/whatsapp", sign_url=WEBHOOK_URL, account_sid=TEST_ACCOUNT_SID,
                           auth_token=TEST_AUTH_TOKEN, body="hello")
    assert result.status == 200 and result.message_sid.startswith("SM")
    assert result.reply_text.startswith("Send me a voice message")


class TestCommandLine:
    def test_prints_the_reply(self, gateway_app: Flask, serve_gateway: Callable[[Flask], str], voice_note: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
        base = serve_gateway(gateway_app)
        code = simulate.main([
            "--wait", "0",  # this gateway's vision service is down on purpose
            "--from", "+15551234567", "--url", f"{base}/whatsapp", "--sign-url", WEBHOOK_URL,
            "--account-sid", TEST_ACCOUNT_SID, "--auth-token", TEST_AUTH_TOKEN, "--profile-name", "Ana",
            "--content-type", "audio/ogg", str(voice_note),
        ])
        assert code == 0
        # The reply, then (a first contact) the privacy notice as a second message, after a blank line.
        reply, notice = capsys.readouterr().out.strip().split("\n\n")
        assert SAVED.fullmatch(reply)
        assert notice.startswith("I keep the voice messages and face photos you send me")

    def test_http_errors_exit_non_zero(self, gateway_app: Flask, serve_gateway: Callable[[Flask], str],
                                       voice_note: Path, capsys: pytest.CaptureFixture[str]) -> None:
        base = serve_gateway(gateway_app)
        code = simulate.main(["--wait", "0", "--url", f"{base}/whatsapp", "--auth-token", "wrong-token",
                              str(voice_note)])
        assert code == 1
        captured = capsys.readouterr()
        assert "HTTP 403" in captured.err and captured.out == ""

    def test_unreachable_gateway_exits_non_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert simulate.main(["--wait", "0.3", "--url", f"http://127.0.0.1:{free_port()}/whatsapp"]) == 1
        err = capsys.readouterr().err
        assert "waiting up to 0.3 s for the gateway" in err and "could not reach the gateway" in err

    def test_waits_for_the_backends_the_gateway_reports_not_serving(
        self, gateway_app: Flask, serve_gateway: Callable[[Flask], str], voice_note: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # /readyz is 200 (the intake keeps messages) while the vision service is down: the demo waits for it,
        # names it, and sends once the wait is over.
        base = serve_gateway(gateway_app)
        assert simulate.wait_until_serving(f"{base}/whatsapp", 0.3) == ["vision"]
        code = simulate.main(["--wait", "0.3", "--url", f"{base}/whatsapp", "--sign-url", WEBHOOK_URL,
                              "--account-sid", TEST_ACCOUNT_SID, "--auth-token", TEST_AUTH_TOKEN,
                              "--content-type", "audio/ogg", str(voice_note)])
        captured = capsys.readouterr()
        assert code == 0 and "waiting up to 0.3 s for vision" in captured.err
        assert SAVED.fullmatch(captured.out.strip().split("\n\n")[0])

    def test_missing_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert simulate.main([str(tmp_path / "nope.ogg")]) == 2
        assert "no such file" in capsys.readouterr().err

    def test_more_content_types_than_files_is_a_usage_error(self) -> None:
        with pytest.raises(SystemExit) as exited:
            simulate.main(["--content-type", "audio/ogg"])
        assert exited.value.code == 2


@pytest.mark.slow
def test_simulator_against_the_make_run_processes(local_stack: Stack, voice_note: Path) -> None:
    """`make run` + `python -m gateway.whatsapp.simulate --from ... voice.ogg` in a fresh checkout: a WAV under the sender."""
    completed = subprocess.run(
        # --wait 0: this stack runs without a vision service, so its /readyz never lists every backend serving.
        [sys.executable, "-m", "gateway.whatsapp.simulate", "--wait", "0", "--from", "+15551234567", str(voice_note)],
        env=local_stack.env, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert completed.returncode == 0, completed.stderr + local_stack.log_tail()
    reply, notice = completed.stdout.strip().split("\n\n")
    assert SAVED.fullmatch(reply) and "Send MY DATA" in notice, completed.stdout
    wavs = list((local_stack.media_root / "whatsapp" / "15551234567" / "audio").glob("*.wav"))
    assert len(wavs) == 1
    assert wavs[0].with_name(wavs[0].name + ".json").is_file()
    gateway_log = next(p for p in local_stack.logs if p.name == "gateway.log").read_text()
    assert "RUNNING WITH DEVELOPMENT TWILIO CREDENTIALS" in gateway_log
    assert '"msg": "webhook handled"' in gateway_log
