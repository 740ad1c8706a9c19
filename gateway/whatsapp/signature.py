"""The X-Twilio-Signature check: one decorator, always on.

There is deliberately no switch that skips it (not in debug, not in development): local runs use a
development token that the simulator signs with, so the code path is the same everywhere. That token is
public, so in development mode (gateway.config) a request from anywhere but this machine is refused too.

The signature covers the exact URL Twilio called plus the sorted form fields. Behind ngrok or a load
balancer the URL Flask sees differs from that one, so it is rebuilt from PUBLIC_BASE_URL (scheme, host and
port) and the request's path and query string, always, TRUST_PROXY or not. X-Forwarded-Host/-Proto/-Prefix
are never consulted: a proxy may pass a client's own values through, and a signature checked against a host
the client chose is a signature checked against anything. TRUST_PROXY=1 only takes the client's address
(for the logs) from the one proxy hop's X-Forwarded-For (gateway.create_app).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from flask import Request, Response, current_app, request
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from gateway import metrics
from gateway.config import Settings, is_loopback_host

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., object])


class SignatureChecker:
    """Made once per app from the settings; holds the validators for the auth token and the shared key."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._token_validator = RequestValidator(settings.twilio_auth_token)
        self._shared_key_validator = (
            RequestValidator(settings.twilio_webhook_shared_key) if settings.twilio_webhook_shared_key else None
        )

    def signed_url(self, req: Request) -> str:
        parts = urlsplit(req.url)  # werkzeug's URL: path and query string percent-encoded as received
        query = f"?{parts.query}" if parts.query else ""
        return f"{self._settings.public_base_url}{parts.path}{query}"

    def rejection(self, req: Request) -> str | None:
        """None when the request is genuinely from Twilio, else why not (for the log, never the client)."""
        if self._settings.dev_credentials and not is_loopback_host(req.remote_addr or ""):
            # Anyone can sign with the development token; only this machine may use it. (Development mode
            # requires TRUST_PROXY=0, so remote_addr is the socket's peer, not a header.)
            return f"development credentials: webhooks are accepted from this machine only, not {req.remote_addr}"
        signature = req.headers.get(SIGNATURE_HEADER, "")
        if not signature:
            return "no X-Twilio-Signature header"
        settings_header = req.headers.get(SIGNATURE_SETTINGS_HEADER)
        if settings_header:
            # A Twilio Webhook Rule signs with a SharedKey and names the algorithm in this header.
            if self._shared_key_validator is None:
                return "signed with a webhook SharedKey but TWILIO_WEBHOOK_SHARED_KEY is not set"
            validator, algorithm = self._shared_key_validator, get_signature_algorithm(settings_header)
        else:
            validator, algorithm = self._token_validator, None
        url = self.signed_url(req)
        if not validator.validate(url, req.form, signature, algorithm):
            return f"signature does not match {url}"
        return None


def twilio_signature_required(view: F) -> F:
    """Answer 403 before the view runs (so nothing is downloaded or stored) unless Twilio signed the request."""

    @functools.wraps(view)
    def wrapper(*args: object, **kwargs: object) -> object:
        checker: SignatureChecker = current_app.extensions["mediabot"].signatures
        reason = checker.rejection(request)
        if reason is not None:
            logger.warning(
                "signature rejected",
                extra={"reason": reason, "path": request.path, "remote_addr": request.remote_addr},
            )
            metrics.record_webhook("bad_signature")
            return Response("Invalid Twilio signature.\n", status=403, mimetype="text/plain")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
