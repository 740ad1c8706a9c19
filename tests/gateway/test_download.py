"""Media downloads against a real loopback HTTP server: allowlist, credentials, redirects, retries, caps."""

from __future__ import annotations

import time

import pytest

from gateway.budget import Budget
from gateway.download import DownloadError, Failure, MediaDownloader, check_url
from tests.fixtures.gateway import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, MediaServer, Route

BODY = b"OggS" + bytes(range(256)) * 40


def downloader(
    allow: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    max_bytes: int = 1024 * 1024,
    read_timeout_s: float = 2.0,
    retry_delays_s: tuple[float, ...] = (0.05, 0.1),
) -> MediaDownloader:
    return MediaDownloader(
        account_sid=TEST_ACCOUNT_SID,
        auth_token=TEST_AUTH_TOKEN,
        allowlist=frozenset(allow),
        max_bytes=max_bytes,
        connect_timeout_s=2.0,
        read_timeout_s=read_timeout_s,
        retry_delays_s=retry_delays_s,
    )


def fetch(d: MediaDownloader, url: str, budget_s: float = 10.0) -> bytes:
    try:
        return d.fetch(url, Budget(budget_s)).data
    finally:
        d.close()


def failure(d: MediaDownloader, url: str, budget_s: float = 10.0) -> Failure:
    with pytest.raises(DownloadError) as caught:
        fetch(d, url, budget_s)
    return caught.value.failure


def test_downloads_with_basic_auth(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=BODY, content_type="audio/ogg")
    d = downloader()
    result = d.fetch(url, Budget(10))
    d.close()
    assert result.data == BODY
    assert result.content_type == "audio/ogg"
    assert result.attempts == 1
    (seen,) = media_server.requests_for("/m/1")
    assert seen.authorization == media_server.expected_auth


def test_wrong_credentials_are_refused_by_the_host(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=BODY)
    d = MediaDownloader(
        account_sid=TEST_ACCOUNT_SID, auth_token="wrong", allowlist=frozenset({"127.0.0.1"}), max_bytes=10**6,
        connect_timeout_s=1, read_timeout_s=1, retry_delays_s=(),
    )
    assert failure(d, url) is Failure.REFUSED


def test_a_host_off_the_allowlist_is_never_contacted(media_server: MediaServer) -> None:
    media_server.add("/m/1", body=BODY)
    # The same server, reached by a name that is not on the list.
    url = media_server.url("/m/1", host="localhost")
    assert failure(downloader(allow=("127.0.0.1",)), url) is Failure.DISALLOWED_URL
    assert media_server.seen == []


def test_redirect_to_another_host_does_not_carry_the_credentials(media_server: MediaServer) -> None:
    cdn_url = media_server.add("/cdn/abc", body=BODY, require_auth=False)
    api_url = media_server.add("/api/m/1", redirect_to=cdn_url.replace("127.0.0.1", "localhost"))
    assert fetch(downloader(), api_url) == BODY
    (api,) = media_server.requests_for("/api/m/1")
    (cdn,) = media_server.requests_for("/cdn/abc")
    assert api.host.startswith("127.0.0.1") and api.authorization == media_server.expected_auth
    assert cdn.host.startswith("localhost") and cdn.authorization is None


def test_redirect_to_a_host_off_the_allowlist_is_not_followed(media_server: MediaServer) -> None:
    media_server.add("/cdn/abc", body=BODY, require_auth=False)
    api_url = media_server.add("/api/m/1", redirect_to=media_server.url("/cdn/abc", host="localhost"))
    assert failure(downloader(allow=("127.0.0.1",)), api_url) is Failure.DISALLOWED_URL
    assert media_server.requests_for("/cdn/abc") == []


def test_redirect_loops_end(media_server: MediaServer) -> None:
    url = media_server.add("/loop", redirect_to="/loop")
    assert failure(downloader(), url) is Failure.HTTP_ERROR


def test_404_then_200_is_retried(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=BODY, statuses=(404, 200))
    d = downloader(retry_delays_s=(0.2, 0.5))
    started = time.monotonic()
    result = d.fetch(url, Budget(10))
    d.close()
    assert result.data == BODY and result.attempts == 2
    assert time.monotonic() - started >= 0.2  # it did wait before retrying


@pytest.mark.slow
def test_404_retries_follow_the_default_1s_then_3s_schedule(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=BODY, statuses=(404, 404, 200))
    d = downloader(retry_delays_s=(1.0, 3.0))
    started = time.monotonic()
    assert d.fetch(url, Budget(10)).attempts == 3
    d.close()
    assert time.monotonic() - started >= 4.0


def test_404_forever_gives_up_after_the_retries(media_server: MediaServer) -> None:
    media_server.add("/m/1", statuses=(404,))
    assert failure(downloader(), media_server.url("/m/1")) is Failure.NOT_FOUND
    assert len(media_server.requests_for("/m/1")) == 3  # first try + two retries


def test_no_retry_pause_that_the_budget_cannot_afford(media_server: MediaServer) -> None:
    media_server.add("/m/1", statuses=(404, 200), body=BODY)
    assert failure(downloader(retry_delays_s=(5.0,)), media_server.url("/m/1"), budget_s=3) is Failure.NOT_FOUND
    assert len(media_server.requests_for("/m/1")) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_fail_without_retry(media_server: MediaServer, status: int) -> None:
    media_server.add("/m/1", statuses=(status,))
    assert failure(downloader(), media_server.url("/m/1")) is Failure.SERVER_ERROR
    assert len(media_server.requests_for("/m/1")) == 1


def test_a_slow_host_times_out(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=BODY, delay_s=4.0)
    # TIMEOUT, not the body the host sends after 4 s: the read timeout ended the wait.
    assert failure(downloader(read_timeout_s=0.5), url) is Failure.TIMEOUT


def test_the_budget_cuts_a_download_short(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=BODY, delay_s=4.0)
    # TIMEOUT, not the body the host sends after 4 s: the budget, not the 30 s read timeout, ended the wait.
    assert failure(downloader(read_timeout_s=30), url, budget_s=0.5) is Failure.TIMEOUT


def test_an_unreachable_host_is_a_connection_failure() -> None:
    from tests.fixtures.gateway import closed_port_addr

    assert failure(downloader(), f"http://{closed_port_addr()}/m/1") is Failure.CONNECTION


def test_declared_length_over_the_cap_is_refused_before_reading(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=b"x" * 5000)
    assert failure(downloader(max_bytes=4096), url) is Failure.TOO_LARGE


@pytest.mark.parametrize("route", [Route(send_length=False), Route(chunked=True)], ids=["no-length", "chunked"])
def test_body_over_the_cap_is_abandoned_while_streaming(media_server: MediaServer, route: Route) -> None:
    route.body = b"x" * (3 * 1024 * 1024)
    url = media_server.add("/m/1", route)
    assert failure(downloader(max_bytes=64 * 1024), url) is Failure.TOO_LARGE


def test_a_body_exactly_at_the_cap_is_accepted(media_server: MediaServer) -> None:
    url = media_server.add("/m/1", body=b"x" * 4096, send_length=False)
    assert fetch(downloader(max_bytes=4096), url) == b"x" * 4096


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.twilio.com/x",
        "file:///etc/passwd",
        "http://api.twilio.com/x",  # credentials never travel in clear text off this machine
        "https://user:pw@api.twilio.com/x",
        "https://api.twilio.com.evil.example/x",
        "https://evil.example/api.twilio.com",
        "https://api.twilio.com:99999/x",
        "",
        "/relative",
    ],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(DownloadError) as caught:
        check_url(url, frozenset({"api.twilio.com", "127.0.0.1"}))
    assert caught.value.failure is Failure.DISALLOWED_URL


@pytest.mark.parametrize("url", ["https://api.twilio.com/2010-04-01/x", "https://API.twilio.com/x", "http://127.0.0.1:8/x"])
def test_check_url_accepts(url: str) -> None:
    check_url(url, frozenset({"api.twilio.com", "127.0.0.1"}))
