"""The signed URL, shape by shape: what Twilio signs in each real deployment is what the gateway checks.

tests/gateway/test_signature.py covers the basics (missing, wrong, tampered, the :443 spelling, the shared
key); this adds the remaining URL shapes of issue 6 and the body-size cap, each signed by the real
twilio RequestValidator and posted to the real app.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from gateway import metrics
from tests.fixtures.gateway import media_form, signed_post

NGROK = "https://f00d-203-0-113-9.ngrok-free.app"


@pytest.mark.parametrize(
    ("env", "path", "headers", "sign_url", "status"),
    [
        # ngrok forwards https to the gateway's plain http port: the public URL is rebuilt from PUBLIC_BASE_URL.
        ({"PUBLIC_BASE_URL": NGROK}, "/whatsapp", {}, f"{NGROK}/whatsapp", 200),
        ({"PUBLIC_BASE_URL": NGROK}, "/whatsapp", {}, "http://localhost/whatsapp", 403),
        # An explicit, non-default port is part of the URL Twilio signs.
        ({"PUBLIC_BASE_URL": "https://bot.example.test:8443"}, "/whatsapp", {},
         "https://bot.example.test:8443/whatsapp", 200),
        # twilio's RequestValidator also accepts the URL with its port removed (Twilio has signed both ways
        # over the years); still our host and path, and still our token: nothing an attacker can use.
        ({"PUBLIC_BASE_URL": "https://bot.example.test:8443"}, "/whatsapp", {},
         "https://bot.example.test/whatsapp", 200),
        ({"PUBLIC_BASE_URL": "https://bot.example.test:8443"}, "/whatsapp", {},
         "https://bot.example.test:9443/whatsapp", 403),
        # Query string: signed as sent, byte for byte; reordering it breaks the signature.
        ({}, "/whatsapp?a=1&b=two%20words", {}, "https://bot.example.test/whatsapp?a=1&b=two%20words", 200),
        ({}, "/whatsapp?b=two%20words&a=1", {}, "https://bot.example.test/whatsapp?a=1&b=two%20words", 403),
        # Behind one proxy (TRUST_PROXY=1) the URL still comes from PUBLIC_BASE_URL, port included; what the
        # proxy forwards in X-Forwarded-* neither helps nor hurts.
        ({"TRUST_PROXY": "1", "PUBLIC_BASE_URL": "https://hooks.example.test:8443"}, "/whatsapp",
         {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.test", "X-Forwarded-Port": "8443",
          "X-Forwarded-For": "203.0.113.9"},
         "https://hooks.example.test:8443/whatsapp", 200),
        ({"TRUST_PROXY": "1", "PUBLIC_BASE_URL": "https://hooks.example.test"}, "/whatsapp",
         {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.test", "X-Forwarded-Port": "443"},
         "https://hooks.example.test/whatsapp", 200),
        # ...and the default port may be signed spelled out or not (Twilio's validator tries both).
        ({"TRUST_PROXY": "1", "PUBLIC_BASE_URL": "https://hooks.example.test"}, "/whatsapp",
         {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.test", "X-Forwarded-Port": "443"},
         "https://hooks.example.test:443/whatsapp", 200),
        # A proxy that says http (TLS ended in front of it) does not change the scheme Twilio signed.
        ({"TRUST_PROXY": "1", "PUBLIC_BASE_URL": "https://hooks.example.test"}, "/whatsapp",
         {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "hooks.example.test"},
         "https://hooks.example.test/whatsapp", 200),
        # Forged headers pick nothing, with or without TRUST_PROXY: a signature made for another URL stays refused.
        ({"TRUST_PROXY": "1", "PUBLIC_BASE_URL": "https://hooks.example.test"}, "/whatsapp",
         {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
         "https://evil.example/whatsapp", 403),
        ({}, "/whatsapp", {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
         "https://evil.example/whatsapp", 403),
    ],
    ids=["ngrok", "ngrok-signed-for-local-url", "explicit-port", "explicit-port-dropped", "other-port", "query",
         "query-reordered", "proxy-port", "proxy-default-port", "proxy-default-port-spelled",
         "proxy-says-http", "forged-forwarded-host-behind-proxy", "forged-forwarded-headers"],
)
def test_signed_url_shapes(
    make_gateway: Callable[..., Flask], env: dict[str, str], path: str, headers: dict[str, str], sign_url: str,
    status: int,
) -> None:
    client = make_gateway(**env).test_client()
    response = signed_post(client, media_form([]), path=path, sign_url=sign_url, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)


def test_trailing_slash_is_part_of_the_signed_url(make_gateway: Callable[..., Flask]) -> None:
    """A webhook configured as .../whatsapp/ is served, and signed with the slash: checked against it exactly."""
    client = make_gateway().test_client()
    with_slash = "https://bot.example.test/whatsapp/"
    assert signed_post(client, media_form([]), path="/whatsapp/", sign_url=with_slash).status_code == 200
    assert signed_post(client, media_form([]), path="/whatsapp/", sign_url=with_slash[:-1]).status_code == 403
    assert signed_post(client, media_form([]), path="/whatsapp", sign_url=with_slash).status_code == 403


def test_rejections_are_counted(make_gateway: Callable[..., Flask]) -> None:
    client = make_gateway().test_client()
    before = metrics.WEBHOOKS.labels("bad_signature")._value.get()
    assert signed_post(client, media_form([]), signature="AAAA").status_code == 403
    assert metrics.WEBHOOKS.labels("bad_signature")._value.get() == before + 1


# -- body size ------------------------------------------------------------------------------------------


def test_an_oversized_body_is_refused_with_413_before_anything_reads_it(make_gateway: Callable[..., Flask]) -> None:
    client = make_gateway().test_client()
    form = media_form([], Body="x" * (300 * 1024))
    response = signed_post(client, form)
    assert response.status_code == 413
    assert b"Traceback" not in response.data


def test_a_twilio_sized_form_with_ten_media_fits(make_gateway: Callable[..., Flask]) -> None:
    """The largest real webhook (10 media URLs, a long body, a profile name) is far under the cap."""
    media = [(f"https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME{n:032x}", "image/jpeg")
             for n in range(10)]
    form = media_form(media, Body="é" * 4096, ProfileName="P" * 256, MessageType="image")
    body_size = sum(len(k) + len(v.encode()) for k, v in form.items())
    assert body_size < 16 * 1024
    client = make_gateway(MEDIA_HOST_ALLOWLIST="127.0.0.1").test_client()
    assert signed_post(client, form).status_code == 200
