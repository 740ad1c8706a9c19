"""Fetching a message's media from Twilio: authenticated, allowlisted, capped and on a deadline.

Twilio's MediaUrl{N} (on api.twilio.com) wants HTTP basic auth with the account SID and auth token, then
redirects to a short-lived URL on its CDN. The credentials must reach Twilio and nobody else, so:
- every URL, and every redirect hop before it is followed, must be on the host allowlist, over https
  (plain http only to loopback hosts, which is where the simulator and the tests serve media);
- an allowlisted name must also resolve to public addresses only (no private, loopback, link-local or
  reserved ones; MEDIA_ALLOW_PRIVATE_ADDRESSES=1 lifts this for an internal mirror), so a DNS record
  pointed at 10.0.0.1 or 169.254.169.254 cannot turn the allowlist into a way in. IPv6 spellings of an IPv4
  address are judged by the IPv4 address inside them (``is_public_address``), since a NAT64 gateway or a
  dual-stack socket delivers them there; only hosts written as loopback (localhost, 127.0.0.1, ::1: the
  simulator and the tests) are exempt. The check runs before each
  hop, not on the connection itself, so a DNS answer that changes between the two (rebinding) is not
  covered; an egress NetworkPolicy (k8s/) is the layer that closes that;
- the credentials are attached to the first request only; on a redirect to another host requests'
  ``Session.rebuild_auth`` drops the Authorization header (``should_strip_auth``), and with
  ``trust_env`` off it adds nothing back from ~/.netrc either (tests/gateway checks this on the wire).
The body is streamed and abandoned as soon as it passes the size cap, and its reads are cut off at the
webhook budget, so a slow or huge download can neither stall the reply nor fill memory.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from gateway.budget import Budget
from gateway.config import is_loopback_host

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024
_MAX_REDIRECTS = 5


class Failure(enum.Enum):
    DISALLOWED_URL = "disallowed_url"
    NOT_FOUND = "not_found"
    REFUSED = "refused"  # 401/403: our credentials were not accepted
    HTTP_ERROR = "http_error"  # any other unexpected status, or a redirect loop
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TOO_LARGE = "too_large"


class DownloadError(Exception):
    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True)
class Downloaded:
    data: bytes
    # Content-Type of the final response (parameters dropped), for the logs; the webhook's declared type wins.
    content_type: str
    # How many times the URL was requested (more than 1 after a 404 retry).
    attempts: int


def check_url(url: str, allowlist: frozenset[str]) -> None:
    """Raise DownloadError(DISALLOWED_URL) unless ``url`` may be fetched (and may receive credentials)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise DownloadError(Failure.DISALLOWED_URL, "malformed URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise DownloadError(Failure.DISALLOWED_URL, f"not an http(s) URL: scheme {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise DownloadError(Failure.DISALLOWED_URL, "URL carries its own credentials")
    if host not in allowlist:
        raise DownloadError(Failure.DISALLOWED_URL, f"host {host!r} is not on MEDIA_HOST_ALLOWLIST")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise DownloadError(Failure.DISALLOWED_URL, f"plain http to {host!r}; only https leaves this machine")


def vet_url(url: str, allowlist: frozenset[str], *, allow_private: bool) -> None:
    """check_url, then (unless ``allow_private``) the DNS check: run before every request and redirect hop."""
    check_url(url, allowlist)
    host = (urlsplit(url).hostname or "").lower()
    if not allow_private and not is_loopback_host(host):
        check_resolves_public(host)


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at (RFC 6052 NAT64, RFC 4291).
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# RFC 8215's local-use NAT64 prefix: translated by a gateway of the site's own choosing, so where it leads
# cannot be judged from the address; refused whatever it embeds.
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, IPv4-compatible, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_WELL_KNOWN or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for an address that is globally routable and does not lead to a private one.

    ``is_global`` alone is not enough: Python calls 64:ff9b::10.0.0.1 global (the NAT64 prefix is, the
    IPv4 address behind it is not), and which IPv4-compatible or mapped addresses it calls global depends
    on the Python release. ::a.b.c.d (deprecated by RFC 4291) and the local-use NAT64 prefix are refused
    outright; the well-known NAT64 prefix, used by DNS64 on IPv6-only clusters, only with a public IPv4.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _IPV4_COMPATIBLE or address in _NAT64_LOCAL_USE:
            return False
        inner = embedded_ipv4(address)
        if inner is not None and not inner.is_global:
            return False
        if address.ipv4_mapped is not None or address in _NAT64_WELL_KNOWN:
            return True  # judged by the IPv4 address alone (is_global above)
    return address.is_global


def check_resolves_public(host: str) -> None:
    """Refuse a host that resolves to any address that is not globally routable."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise DownloadError(Failure.CONNECTION, f"cannot resolve {host!r}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not is_public_address(address):
            raise DownloadError(
                Failure.DISALLOWED_URL, f"host {host!r} resolves to a non-public address ({address})"
            )


class _AllowlistedSession(requests.Session):
    """A Session that vets each redirect target before requests follows it."""

    def __init__(self, allowlist: frozenset[str], allow_private: bool) -> None:
        super().__init__()
        self._allowlist = allowlist
        self._allow_private = allow_private
        self.max_redirects = _MAX_REDIRECTS
        # No proxies or ~/.netrc credentials from the environment: nothing but our own auth, to our own hosts.
        self.trust_env = False

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is not None:
            try:
                vet_url(urljoin(resp.url, target), self._allowlist, allow_private=self._allow_private)
            except DownloadError:
                resp.close()
                raise
        return target


class MediaDownloader:
    """Long-lived (one per app): holds the connection pool to Twilio across webhooks."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        allowlist: frozenset[str],
        max_bytes: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        retry_delays_s: Iterable[float],
        allow_private: bool = False,
    ) -> None:
        self._auth = (account_sid, auth_token)
        self._allowlist = allowlist
        self._max_bytes = max_bytes
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._retry_delays_s = tuple(retry_delays_s)
        self._allow_private = allow_private
        self._session = _AllowlistedSession(allowlist, allow_private)

    def close(self) -> None:
        self._session.close()

    def fetch(self, url: str, budget: Budget, on_length: Callable[[int], None] | None = None) -> Downloaded:
        """The whole body, or DownloadError saying why not.

        ``on_length`` is called with the body's size (its Content-Length, or the size cap when the host
        declares none) once the answer's headers are in and before the body is read, so the caller can
        claim the memory it will take (gateway.media_memory); whatever it raises ends the download.

        A 404 is retried after each of the configured pauses (1 s, then 3 s by default) while the budget
        allows: WhatsApp media can 404 for a moment right after the webhook arrives. Other failures are
        final; Twilio itself does not resend a webhook we answered.
        """
        vet_url(url, self._allowlist, allow_private=self._allow_private)
        delays = iter(self._retry_delays_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._fetch_once(url, budget, attempt, on_length)
            except DownloadError as error:
                if error.failure is not Failure.NOT_FOUND:
                    raise
                delay = next(delays, None)
                # Only pause if a retry would still have time to run after the pause.
                if delay is None or budget.remaining() <= delay + 0.5:
                    raise
                logger.info("media not there yet, retrying", extra={"attempt": attempt, "retry_in_s": delay})
                time.sleep(delay)

    def _fetch_once(
        self, url: str, budget: Budget, attempt: int, on_length: Callable[[int], None] | None
    ) -> Downloaded:
        if budget.expired():
            raise DownloadError(Failure.TIMEOUT, "no time left in the webhook budget")
        timeout = (budget.cap(self._connect_timeout_s), budget.cap(self._read_timeout_s))
        try:
            with self._session.get(
                url,
                auth=self._auth,
                stream=True,
                timeout=timeout,
                # Identity: the size cap must count the bytes we hold, not a compressed transfer size.
                headers={"Accept-Encoding": "identity"},
            ) as response:
                declared = self._check_status(response)
                if on_length is not None:
                    on_length(self._max_bytes if declared is None else declared)
                body = read_capped(response, budget, max_bytes=self._max_bytes, read_timeout_s=self._read_timeout_s)
                content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                return Downloaded(data=body, content_type=content_type, attempts=attempt)
        except requests.Timeout as error:
            raise DownloadError(Failure.TIMEOUT, f"no answer in time ({type(error).__name__})") from None
        except requests.TooManyRedirects:
            raise DownloadError(Failure.HTTP_ERROR, f"more than {_MAX_REDIRECTS} redirects") from None
        except requests.ConnectionError as error:
            if _is_read_timeout(error):
                raise DownloadError(Failure.TIMEOUT, "the download stalled") from None
            raise DownloadError(Failure.CONNECTION, f"connection failed ({type(error).__name__})") from None
        except requests.RequestException as error:
            raise DownloadError(Failure.CONNECTION, f"request failed ({type(error).__name__})") from None

    def _check_status(self, response: requests.Response) -> int | None:
        """The declared Content-Length of a 200 (None if absent), or DownloadError for any other status."""
        status = response.status_code
        if status == 200:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise DownloadError(Failure.TOO_LARGE, f"Content-Length {declared} is over {self._max_bytes}")
            return int(declared) if declared.isdigit() else None
        if status == 404:
            raise DownloadError(Failure.NOT_FOUND, "404 from the media host")
        if status in (401, 403):
            raise DownloadError(Failure.REFUSED, f"{status}: the media host refused our credentials")
        if status >= 500:
            raise DownloadError(Failure.SERVER_ERROR, f"{status} from the media host")
        raise DownloadError(Failure.HTTP_ERROR, f"unexpected status {status}")



def read_capped(response: requests.Response, budget: Budget, *, max_bytes: int, read_timeout_s: float) -> bytes:
    """A streamed response's body, at most ``max_bytes``, within ``budget``; DownloadError otherwise.

    Shared by every media host (Twilio's, the Telegram Bot API's): the one place where a body is read.
    """
    body = bytearray()
    raw = response.raw
    try:
        while True:
            if budget.expired():
                raise DownloadError(Failure.TIMEOUT, "the download did not finish within the webhook budget")
            # The read timeout given to requests is fixed when the request starts; narrow it on the socket as
            # the budget runs down, so one last stalled read cannot carry the webhook past its budget.
            sock = getattr(raw.connection, "sock", None)
            if sock is not None:
                sock.settimeout(max(0.01, budget.cap(read_timeout_s)))
            # read1 returns what has arrived (up to the chunk size) instead of waiting for a full chunk,
            # so a server trickling bytes is noticed at the budget, not after a whole chunk.
            chunk = raw.read1(_CHUNK_BYTES)
            if not chunk:
                data = bytes(body)  # protobuf takes bytes only: the one copy, and the buffer goes at once
                del body[:]
                return data
            body += chunk
            if len(body) > max_bytes:
                raise DownloadError(Failure.TOO_LARGE, f"body passed {max_bytes} bytes")
    except urllib3.exceptions.ReadTimeoutError:
        raise DownloadError(Failure.TIMEOUT, "the download stalled") from None
    except urllib3.exceptions.HTTPError as error:
        raise DownloadError(Failure.CONNECTION, f"the download broke off ({type(error).__name__})") from None


def _is_read_timeout(error: requests.ConnectionError) -> bool:
    cause = error.args[0] if error.args else None
    return isinstance(cause, urllib3.exceptions.ReadTimeoutError) or "Read timed out" in str(cause)
