"""No SSRF: media is fetched only from allowlisted hosts that resolve to public addresses, only over https
(plain http to loopback names only), and every redirect hop is vetted again before it is followed.

The internal addresses here are real spellings that resolve to 127.0.0.1 through the system resolver
("127.1", "2130706433": the classic ways past a naive IP check), so nothing is faked: the check either
refuses them before connecting, or the media server would see the request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from flask import Flask

from gateway.budget import Budget
from gateway.download import DownloadError, Failure, MediaDownloader, is_public_address
from tests.fixtures.gateway import (
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    MediaServer,
    media_form,
    reply_of,
    signed_post,
)

INTERNAL_SPELLINGS = ("127.1", "2130706433", "0x7f.0.0.1")


def downloader(allowlist: set[str], *, allow_private: bool = False) -> MediaDownloader:
    return MediaDownloader(
        account_sid=TEST_ACCOUNT_SID, auth_token=TEST_AUTH_TOKEN, allowlist=frozenset(allowlist), max_bytes=1024,
        connect_timeout_s=1.0, read_timeout_s=1.0, retry_delays_s=(), allow_private=allow_private,
    )


@pytest.mark.parametrize("host", INTERNAL_SPELLINGS)
def test_an_allowlisted_name_that_resolves_to_an_internal_address_is_refused(
    media_server: MediaServer, host: str
) -> None:
    media_server.add("/m", body=b"secret", require_auth=False)
    fetcher = downloader({host})
    with pytest.raises(DownloadError) as raised:
        fetcher.fetch(f"https://{host}:{media_server.port}/m", Budget(5))
    fetcher.close()
    assert raised.value.failure is Failure.DISALLOWED_URL
    assert "non-public address (127.0.0.1)" in raised.value.detail
    assert media_server.seen == []


def test_allow_private_lifts_only_the_address_check(media_server: MediaServer) -> None:
    """With MEDIA_ALLOW_PRIVATE_ADDRESSES the request goes out (and fails at TLS: the server speaks http)."""
    media_server.add("/m", body=b"x", require_auth=False)
    fetcher = downloader({"127.1"}, allow_private=True)
    with pytest.raises(DownloadError) as raised:
        fetcher.fetch(f"https://127.1:{media_server.port}/m", Budget(5))
    fetcher.close()
    assert raised.value.failure is Failure.CONNECTION


@pytest.mark.parametrize(
    "target",
    [
        "https://2130706433:{port}/internal",  # allowlisted, but resolves to loopback
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata: not allowlisted
        "http://internal.example.test:{port}/internal",  # allowlisted name, plain http
        "file:///etc/passwd",
        "https://user:pass@127.0.0.1:{port}/internal",  # credentials in the URL
    ],
)
def test_a_redirect_is_vetted_before_it_is_followed(media_server: MediaServer, target: str) -> None:
    target = target.format(port=media_server.port)
    media_server.add("/internal", body=b"secret", require_auth=False)
    start = media_server.add("/m", redirect_to=target)
    fetcher = downloader({"127.0.0.1", "2130706433", "internal.example.test"})
    with pytest.raises(DownloadError) as raised:
        fetcher.fetch(start, Budget(5))
    fetcher.close()
    assert raised.value.failure is Failure.DISALLOWED_URL
    assert [r.path for r in media_server.seen] == ["/m"]


def test_plain_http_to_a_public_host_is_refused_in_production_settings(media_server: MediaServer) -> None:
    fetcher = downloader({"api.twilio.com"})
    with pytest.raises(DownloadError) as raised:
        fetcher.fetch("http://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME", Budget(5))
    fetcher.close()
    assert raised.value.failure is Failure.DISALLOWED_URL
    assert "plain http" in raised.value.detail


def test_through_the_gateway_an_internal_media_url_gets_a_reply_and_no_request(
    make_gateway: Callable[..., Flask], media_server: MediaServer
) -> None:
    media_server.add("/internal", body=b"secret", require_auth=False)
    app = make_gateway(MEDIA_HOST_ALLOWLIST="127.0.0.1,2130706433")
    form = media_form([(f"https://2130706433:{media_server.port}/internal", "image/jpeg")])
    assert reply_of(signed_post(app.test_client(), form)) == "Sorry, I couldn't download your photo."
    assert media_server.seen == []


# IPv6 spellings of an internal IPv4 address: a NAT64 gateway (64:ff9b::/96, 64:ff9b:1::/48) or a dual-stack
# socket (::ffff:a.b.c.d, and the deprecated ::a.b.c.d) delivers them to the IPv4 address inside. Python's own
# ``is_global`` calls several of them global (it looks at the prefix, not at what the prefix carries).
IPV6_SPELLINGS_OF_INTERNAL = (
    "64:ff9b::7f00:1",  # NAT64 well-known prefix + 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 + 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",  # NAT64 local-use prefix + 10.0.0.1
    "::7f00:1",  # IPv4-compatible ::127.0.0.1
    "::a00:1",  # IPv4-compatible ::10.0.0.1
    "::ffff:a00:1",  # IPv4-mapped ::ffff:10.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
)


@pytest.mark.parametrize("literal", IPV6_SPELLINGS_OF_INTERNAL)
def test_ipv6_spellings_of_an_internal_address_are_not_public(literal: str) -> None:
    assert not is_public_address(ipaddress.ip_address(literal))


@pytest.mark.parametrize("literal", ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:808:808"])
def test_public_addresses_and_their_nat64_spelling_stay_public(literal: str) -> None:
    """DNS64 on an IPv6-only cluster answers api.twilio.com with 64:ff9b::<its IPv4>: that must still work."""
    assert is_public_address(ipaddress.ip_address(literal))


@pytest.mark.parametrize("literal", IPV6_SPELLINGS_OF_INTERNAL)
def test_an_allowlisted_ipv6_literal_that_leads_inside_is_refused_before_connecting(
    media_server: MediaServer, literal: str
) -> None:
    media_server.add("/m", body=b"secret", require_auth=False)
    fetcher = downloader({literal})
    with pytest.raises(DownloadError) as raised:
        fetcher.fetch(f"https://[{literal}]:{media_server.port}/m", Budget(5))
    fetcher.close()
    assert raised.value.failure is Failure.DISALLOWED_URL
    assert "non-public address" in raised.value.detail
    assert media_server.seen == []


def test_through_the_gateway_a_nat64_media_url_gets_a_reply_and_no_request(
    make_gateway: Callable[..., Flask], media_server: MediaServer
) -> None:
    app = make_gateway(MEDIA_HOST_ALLOWLIST="127.0.0.1,64:ff9b::7f00:1")
    form = media_form([(f"https://[64:ff9b::7f00:1]:{media_server.port}/internal", "image/jpeg")])
    assert reply_of(signed_post(app.test_client(), form)) == "Sorry, I couldn't download your photo."
    assert media_server.seen == []
