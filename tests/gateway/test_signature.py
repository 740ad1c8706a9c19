"""X-Twilio-Signature: only requests Twilio signed for our public URL get past the door, whatever the setup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from twilio.request_validator import RequestValidator

from tests.fixtures.gateway import (
    PUBLIC_BASE_URL,
    TEST_AUTH_TOKEN,
    WEBHOOK_URL,
    MediaServer,
    media_form,
    signed_post,
    stored_files,
)


@pytest.fixture
def form(media_server: MediaServer) -> dict[str, str]:
    """A voice-note webhook whose media URL the server would serve: a 403 must stop it before any download."""
    url = media_server.add("/media/voice", body=b"OggS" + b"\0" * 100, content_type="audio/ogg")
    return media_form([(url, "audio/ogg")])


def assert_refused(response, media_server: MediaServer, media_root: Path) -> None:  # noqa: ANN001
    assert response.status_code == 403
    assert response.mimetype == "text/plain"
    assert b"Traceback" not in response.data and len(response.data) < 100
    assert media_server.seen == []  # nothing downloaded
    assert stored_files(media_root) == []  # nothing stored


def test_missing_signature(make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer,
                           media_root: Path) -> None:
    response = make_gateway().test_client().post("/whatsapp", data=form)
    assert_refused(response, media_server, media_root)


@pytest.mark.parametrize("signature", ["", "not-base64", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="])
def test_wrong_signature(make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer,
                         media_root: Path, signature: str) -> None:
    response = signed_post(make_gateway().test_client(), form, signature=signature)
    assert_refused(response, media_server, media_root)


def test_signed_with_another_token(make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer,
                                   media_root: Path) -> None:
    response = signed_post(make_gateway().test_client(), form, token="someone-elses-token")
    assert_refused(response, media_server, media_root)


@pytest.mark.parametrize(
    "url",
    [
        "https://other.example.test/whatsapp",
        "http://bot.example.test/whatsapp",  # scheme differs
        f"{PUBLIC_BASE_URL}/whatsapp?x=1",
        f"{PUBLIC_BASE_URL}/other",
        "http://localhost/whatsapp",  # what the test client itself calls
    ],
)
def test_signed_for_another_url(make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer,
                                media_root: Path, url: str) -> None:
    response = signed_post(make_gateway().test_client(), form, sign_url=url)
    assert_refused(response, media_server, media_root)


def test_tampered_field_after_signing(make_gateway: Callable[..., Flask], form: dict[str, str],
                                      media_server: MediaServer, media_root: Path) -> None:
    signature = RequestValidator(TEST_AUTH_TOKEN).compute_signature(WEBHOOK_URL, form)
    tampered = {**form, "WaId": "15550000000"}
    response = signed_post(make_gateway().test_client(), tampered, signature=signature)
    assert_refused(response, media_server, media_root)


def test_development_token_is_refused_when_real_credentials_are_set(
    make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer, media_root: Path
) -> None:
    from gateway.config import DEV_AUTH_TOKEN

    response = signed_post(make_gateway().test_client(), form, token=DEV_AUTH_TOKEN)
    assert_refused(response, media_server, media_root)


def test_a_valid_signature_passes(make_gateway: Callable[..., Flask]) -> None:
    response = signed_post(make_gateway().test_client(), media_form([]))
    assert response.status_code == 200 and response.mimetype == "text/xml"


def test_a_valid_signature_with_the_default_port_spelled_out_passes(make_gateway: Callable[..., Flask]) -> None:
    response = signed_post(make_gateway().test_client(), media_form([]), sign_url="https://bot.example.test:443/whatsapp")
    assert response.status_code == 200


def test_query_string_is_part_of_the_signed_url(make_gateway: Callable[..., Flask]) -> None:
    client = make_gateway().test_client()
    form = media_form([])
    ok = signed_post(client, form, path="/whatsapp?tenant=a%20b", sign_url=f"{WEBHOOK_URL}?tenant=a%20b")
    assert ok.status_code == 200
    moved = signed_post(client, form, path="/whatsapp?tenant=other", sign_url=f"{WEBHOOK_URL}?tenant=a%20b")
    assert moved.status_code == 403


class TestBehindAProxy:
    """TRUST_PROXY=1: the signed URL still comes from PUBLIC_BASE_URL; X-Forwarded-* choose nothing in it.

    The forged requests carry a signature Twilio really made with our token, for another URL (another app on
    the same account, or a tunnel of ours from last week): with the host, scheme or prefix taken from headers,
    replaying it with matching X-Forwarded-* would pass.
    """

    NGROK = "https://abc.ngrok.app/whatsapp"
    FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc.ngrok.app", "X-Forwarded-For": "203.0.113.9"}

    def gateway(self, make_gateway: Callable[..., Flask]) -> Flask:
        return make_gateway(TRUST_PROXY="1", PUBLIC_BASE_URL="https://abc.ngrok.app")

    def test_the_public_url_is_validated_whatever_the_proxy_forwards(self, make_gateway: Callable[..., Flask]) -> None:
        client = self.gateway(make_gateway).test_client()
        assert signed_post(client, media_form([]), sign_url=self.NGROK, headers=self.FORWARDED).status_code == 200
        assert signed_post(client, media_form([]), sign_url=self.NGROK).status_code == 200

    @pytest.mark.parametrize(
        ("sign_url", "forged"),
        [
            ("https://other-app.example/whatsapp", {"X-Forwarded-Host": "other-app.example"}),
            ("http://abc.ngrok.app/whatsapp", {"X-Forwarded-Proto": "http"}),
            ("https://abc.ngrok.app:8443/whatsapp", {"X-Forwarded-Port": "8443"}),
            ("https://abc.ngrok.app/tenant/whatsapp", {"X-Forwarded-Prefix": "/tenant"}),
            ("https://other-app.example/whatsapp", {"Forwarded": "proto=https;host=other-app.example"}),
            ("https://other-app.example/whatsapp", {"Host": "other-app.example"}),
        ],
    )
    def test_forged_forwarded_headers_cannot_move_the_signed_url(
        self, make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer, media_root: Path,
        sign_url: str, forged: dict[str, str],
    ) -> None:
        client = self.gateway(make_gateway).test_client()
        response = signed_post(client, form, sign_url=sign_url, headers={**self.FORWARDED, **forged})
        assert_refused(response, media_server, media_root)

    def test_the_client_address_comes_from_the_one_trusted_hop(
        self, make_gateway: Callable[..., Flask], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The proxy appends the address it saw; whatever the client wrote before it is not believed."""
        client = self.gateway(make_gateway).test_client()
        headers = {"X-Forwarded-For": "127.0.0.1, 198.51.100.20"}
        assert signed_post(client, media_form([]), token="wrong", headers=headers).status_code == 403
        (record,) = [r for r in caplog.records if r.getMessage() == "signature rejected"]
        assert record.remote_addr == "198.51.100.20"

    def test_without_trust_proxy_forwarded_headers_are_ignored(self, make_gateway: Callable[..., Flask]) -> None:
        client = make_gateway().test_client()
        response = signed_post(client, media_form([]), sign_url=self.NGROK, headers=self.FORWARDED)
        assert response.status_code == 403
        assert signed_post(client, media_form([]), headers=self.FORWARDED).status_code == 200


class TestDevelopmentMode:
    """No Twilio credentials: the public development token, accepted from this machine only."""

    LOCAL = "http://127.0.0.1:8080"

    def gateway(self, make_gateway: Callable[..., Flask]) -> Flask:
        app = make_gateway(TWILIO_ACCOUNT_SID="", TWILIO_AUTH_TOKEN="", PUBLIC_BASE_URL=self.LOCAL)
        assert app.extensions["mediabot"].settings.dev_credentials
        return app

    @pytest.mark.parametrize("remote_addr", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
    def test_loopback_clients_are_served(self, make_gateway: Callable[..., Flask], remote_addr: str) -> None:
        from gateway.config import DEV_AUTH_TOKEN

        client = self.gateway(make_gateway).test_client()
        response = signed_post(client, media_form([]), sign_url=f"{self.LOCAL}/whatsapp", token=DEV_AUTH_TOKEN,
                               remote_addr=remote_addr)
        assert response.status_code == 200

    @pytest.mark.parametrize("remote_addr", ["203.0.113.7", "10.0.0.8", "172.17.0.1", "::ffff:203.0.113.7", "2001:db8::1"])
    def test_a_validly_signed_webhook_from_elsewhere_gets_403_and_fetches_nothing(
        self, make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer, media_root: Path,
        remote_addr: str,
    ) -> None:
        """The forged webhook of the issue: signed with the token from the repository, media on loopback."""
        from gateway.config import DEV_AUTH_TOKEN

        client = self.gateway(make_gateway).test_client()
        response = signed_post(client, form, sign_url=f"{self.LOCAL}/whatsapp", token=DEV_AUTH_TOKEN,
                               remote_addr=remote_addr)
        assert_refused(response, media_server, media_root)

    def test_x_forwarded_for_cannot_claim_loopback(
        self, make_gateway: Callable[..., Flask], form: dict[str, str], media_server: MediaServer, media_root: Path
    ) -> None:
        from gateway.config import DEV_AUTH_TOKEN

        client = self.gateway(make_gateway).test_client()
        response = signed_post(client, form, sign_url=f"{self.LOCAL}/whatsapp", token=DEV_AUTH_TOKEN,
                               remote_addr="203.0.113.7", headers={"X-Forwarded-For": "127.0.0.1"})
        assert_refused(response, media_server, media_root)


class TestSharedKey:
    """Twilio Webhook Rules sign with a SharedKey and name the algorithm in X-Twilio-Webhooks-Signature-Settings."""

    SECRET = "shared-key-secret"
    SETTINGS = {"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"}

    def signature(self, form: dict[str, str], secret: str) -> str:
        return RequestValidator(secret).compute_signature(WEBHOOK_URL, form, "HMAC_SHA256")

    def test_shared_key_signature_passes_when_configured(self, make_gateway: Callable[..., Flask]) -> None:
        client = make_gateway(TWILIO_WEBHOOK_SHARED_KEY=self.SECRET).test_client()
        form = media_form([])
        response = signed_post(client, form, signature=self.signature(form, self.SECRET), headers=self.SETTINGS)
        assert response.status_code == 200

    def test_refused_when_no_shared_key_is_configured(self, make_gateway: Callable[..., Flask]) -> None:
        client = make_gateway().test_client()
        form = media_form([])
        # Even a signature made with the auth token: the header says it is not an auth-token signature.
        token_sig = RequestValidator(TEST_AUTH_TOKEN).compute_signature(WEBHOOK_URL, form, "HMAC_SHA256")
        assert signed_post(client, form, signature=token_sig, headers=self.SETTINGS).status_code == 403

    def test_wrong_shared_key_is_refused(self, make_gateway: Callable[..., Flask]) -> None:
        client = make_gateway(TWILIO_WEBHOOK_SHARED_KEY=self.SECRET).test_client()
        form = media_form([])
        response = signed_post(client, form, signature=self.signature(form, "other"), headers=self.SETTINGS)
        assert response.status_code == 403

    def test_unknown_algorithm_is_refused(self, make_gateway: Callable[..., Flask]) -> None:
        client = make_gateway(TWILIO_WEBHOOK_SHARED_KEY=self.SECRET).test_client()
        form = media_form([])
        headers = {"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_MD5"}
        response = signed_post(client, form, signature=self.signature(form, self.SECRET), headers=headers)
        assert response.status_code == 403


def test_get_is_not_a_webhook(make_gateway: Callable[..., Flask]) -> None:
    assert make_gateway().test_client().get("/whatsapp").status_code == 405
