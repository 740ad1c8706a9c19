"""Play Twilio without a phone: serve files as WhatsApp media and post a signed webhook to the gateway.

    python -m gateway.whatsapp.simulate --from +15551234567 voice.ogg [photo.jpg ...]

(Telegram has its own: ``python -m gateway.telegram.simulate``.)

It does what Twilio does for an incoming WhatsApp message: the media sit behind HTTP basic auth (the
account SID and auth token) on a local server, the webhook form has the same fields Twilio sends, and
the X-Twilio-Signature is computed by the twilio library for the URL the gateway believes it is called
at. The reply's text is printed; the exit status is non-zero when the gateway did not answer 200.

With no configuration it targets the local gateway of `make run` and uses the same development
credentials (gateway.config). With real credentials in .env, run it as `honcho run python -m
gateway.whatsapp.simulate ...` so both sides read the same values, and add 127.0.0.1 to MEDIA_HOST_ALLOWLIST.

Tests and benchmarks call ``send(...)`` directly.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import mimetypes
import os
import secrets
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import requests
from twilio.request_validator import RequestValidator

from gateway.config import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, WEBHOOK_PATH, default_public_base_url
from gateway.stack_ready import wait_until_serving

DEFAULT_FROM = "+15551234567"
# Twilio's WhatsApp sandbox number: what `To` holds for anyone trying the bot through the sandbox.
DEFAULT_TO = "whatsapp:+14155238886"
DEFAULT_PROFILE_NAME = "Simulated User"

# What Twilio declares for the files people send on WhatsApp; mimetypes' guesses differ by platform.
_CONTENT_TYPES = {
    ".ogg": "audio/ogg", ".opus": "audio/ogg", ".oga": "audio/ogg", ".mp3": "audio/mpeg", ".m4a": "audio/mp4",
    ".aac": "audio/aac", ".amr": "audio/amr", ".wav": "audio/wav", ".flac": "audio/flac", ".webm": "audio/webm",
    ".3gp": "audio/3gpp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".gif": "image/gif", ".mp4": "video/mp4", ".pdf": "application/pdf", ".vcf": "text/vcard",
}


@dataclass(frozen=True)
class SimResult:
    status: int
    # The text of the TwiML reply's first <Message>: the reply ("" when the gateway sent none, e.g. on 403).
    reply_text: str
    elapsed_s: float
    message_sid: str
    body: str  # the raw HTTP response body

    @property
    def messages(self) -> list[str]:
        """Every <Message> of the reply, in order: the reply, then a privacy notice on first contact."""
        return messages_of(self.body) if self.status == 200 else []


def guess_content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def message_type(content_types: Sequence[str]) -> str:
    """WhatsApp's MessageType for a message carrying these media ("text" without any)."""
    if not content_types:
        return "text"
    major = content_types[0].split("/", 1)[0]
    return {"audio": "audio", "image": "image", "video": "video"}.get(major, "document")


def webhook_form(
    *,
    message_sid: str,
    account_sid: str,
    from_number: str,
    media: Sequence[tuple[str, str]] = (),
    profile_name: str = DEFAULT_PROFILE_NAME,
    body: str = "",
    to: str = DEFAULT_TO,
    wa_id: str | None = None,
    kind: str | None = None,
) -> dict[str, str]:
    """The fields Twilio posts for an incoming WhatsApp message; ``media`` is (url, content type) pairs."""
    number = from_number.removeprefix("whatsapp:")
    form = {
        "SmsMessageSid": message_sid,
        "NumMedia": str(len(media)),
        "ProfileName": profile_name,
        "MessageType": kind or message_type([content_type for _, content_type in media]),
        "SmsSid": message_sid,
        "WaId": number.lstrip("+") if wa_id is None else wa_id,
        "SmsStatus": "received",
        "Body": body,
        "To": to,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": message_sid,
        "AccountSid": account_sid,
        "From": f"whatsapp:{number}",
        "ApiVersion": "2010-04-01",
    }
    for index, (url, content_type) in enumerate(media):
        form[f"MediaContentType{index}"] = content_type
        form[f"MediaUrl{index}"] = url
    return form


def sign(url: str, form: Mapping[str, str], auth_token: str) -> str:
    """The X-Twilio-Signature Twilio would send for this form posted to ``url``."""
    return RequestValidator(auth_token).compute_signature(url, dict(form))


def messages_of(twiml: str) -> list[str]:
    """The text of every <Message> in a TwiML document (each is one WhatsApp message)."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return []
    return ["".join(message.itertext()).strip() for message in root.iter("Message")]


def reply_text(twiml: str) -> str:
    """The reply: the first <Message> ("" when there is none)."""
    return next(iter(messages_of(twiml)), "")


class _MediaHandler(BaseHTTPRequestHandler):
    server: MediaHost

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.server.authorized(self.headers.get("Authorization", "")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        found = self.server.files.get(self.path)
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, content_type = found
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet: the CLI prints only the reply
        pass


class MediaHost(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__(("127.0.0.1", 0), _MediaHandler)
        self.files: dict[str, tuple[Path, str]] = {}
        self._expected = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()

    def authorized(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), self._expected.encode())

    def add(self, account_sid: str, message_sid: str, path: Path, content_type: str) -> str:
        """Serve ``path`` at a Twilio-shaped media URL and return that URL."""
        url_path = f"/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}/Media/{new_sid('ME')}"
        self.files[url_path] = (path, content_type)
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{url_path}"


_Server = TypeVar("_Server", bound=ThreadingHTTPServer)


@contextmanager
def serving_in_thread(server: _Server, name: str) -> Iterator[_Server]:
    """Serve ``server`` from a background thread for as long as the block runs, then close it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def serve_media(account_sid: str, auth_token: str) -> Iterator[MediaHost]:
    """Twilio's media host, played on 127.0.0.1:<free port> for as long as the block runs."""
    with serving_in_thread(MediaHost(account_sid, auth_token), "simulated-twilio-media") as server:
        yield server


def default_url(env: Mapping[str, str] | None = None) -> str:
    """The local gateway's webhook URL, from the same variables and defaults the gateway reads."""
    env = os.environ if env is None else env
    return (env.get("PUBLIC_BASE_URL") or default_public_base_url(env)).rstrip("/") + WEBHOOK_PATH


def send(
    files: Sequence[str | Path] = (),
    *,
    from_number: str = DEFAULT_FROM,
    url: str | None = None,
    sign_url: str | None = None,
    profile_name: str = DEFAULT_PROFILE_NAME,
    body: str = "",
    content_types: Sequence[str | None] = (),
    account_sid: str | None = None,
    auth_token: str | None = None,
    to: str = DEFAULT_TO,
    message_sid: str | None = None,
    timeout_s: float = 20.0,
    media_host: MediaHost | None = None,
) -> SimResult:
    """Deliver one WhatsApp message carrying ``files`` to the gateway and return what it answered.

    ``url`` is where the webhook is posted (default: the local gateway); ``sign_url`` the URL the
    signature is computed for, when the gateway sees itself under another name (e.g. its ngrok URL).
    ``content_types`` overrides the declared type of the file at the same position (None keeps the guess).
    ``message_sid`` reuses a SID, to replay a delivery. ``media_host`` (from ``serve_media``) serves the
    media instead of a host that lives only as long as this call: what a gateway that finishes the work
    later (its spool worker) needs, as Twilio keeps media at its URL. Raises requests.RequestException
    when the gateway cannot be reached.
    """
    account_sid = account_sid or os.environ.get("TWILIO_ACCOUNT_SID") or DEV_ACCOUNT_SID
    auth_token = auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or DEV_AUTH_TOKEN
    url = url or default_url()
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    if len(content_types) > len(paths):
        raise ValueError("more content types than files")
    declared = [
        (content_types[i] if i < len(content_types) and content_types[i] else guess_content_type(path))
        for i, path in enumerate(paths)
    ]
    message_sid = message_sid or new_sid("MM" if paths else "SM")

    with nullcontext(media_host) if media_host is not None else serve_media(account_sid, auth_token) as media_server:
        media = [media_server.add(account_sid, message_sid, path, ct) for path, ct in zip(paths, declared, strict=True)]
        form = webhook_form(
            message_sid=message_sid,
            account_sid=account_sid,
            from_number=from_number,
            media=list(zip(media, declared, strict=True)),
            profile_name=profile_name,
            body=body,
            to=to,
        )
        signature = sign(sign_url or url, form, auth_token)
        with requests.Session() as session:
            session.trust_env = False  # the gateway is local: no proxy from the environment in between
            started = time.perf_counter()
            response = session.post(
                url, data=form, headers={"X-Twilio-Signature": signature}, timeout=timeout_s
            )
            elapsed = time.perf_counter() - started
    text = reply_text(response.text) if response.status_code == 200 else ""
    return SimResult(response.status_code, text, elapsed, message_sid, response.text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.whatsapp.simulate",
        description="Send files to the gateway as a WhatsApp message, the way Twilio would, and print the reply.",
    )
    parser.add_argument("files", nargs="*", type=Path, help="media to attach (none: a text message)")
    parser.add_argument("--from", dest="from_number", default=DEFAULT_FROM,
                        help=f"sender number (default {DEFAULT_FROM})")
    parser.add_argument("--url", default=None, help=f"webhook URL to post to (default {default_url()})")
    parser.add_argument("--sign-url", default=None,
                        help="URL to sign for, if the gateway knows itself by another (default: --url)")
    parser.add_argument("--profile-name", default=DEFAULT_PROFILE_NAME, help="the sender's WhatsApp profile name")
    parser.add_argument("--body", default="", help="message text")
    parser.add_argument("--content-type", action="append", default=[], metavar="TYPE",
                        help="declared type of the Nth file (repeat per file; default: from the file name)")
    parser.add_argument("--account-sid", default=None, help="default: $TWILIO_ACCOUNT_SID, else the development SID")
    parser.add_argument("--auth-token", default=None, help="default: $TWILIO_AUTH_TOKEN, else the development token")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the reply (default 20)")
    parser.add_argument("--wait", type=float, default=60.0, metavar="S",
                        help="seconds to wait first for the gateway's backends to be serving (default 60; 0: don't)")
    args = parser.parse_args(argv)
    if len(args.content_type) > len(args.files):
        parser.error("more --content-type values than files")
    missing = [path for path in args.files if not path.is_file()]
    if missing:
        print(f"simulate: no such file: {missing[0]}", file=sys.stderr)
        return 2
    if args.wait > 0:
        wait_until_serving(args.url or default_url(), args.wait)
    try:
        result = send(
            args.files,
            from_number=args.from_number,
            url=args.url,
            sign_url=args.sign_url,
            profile_name=args.profile_name,
            body=args.body,
            content_types=args.content_type,
            account_sid=args.account_sid,
            auth_token=args.auth_token,
            timeout_s=args.timeout,
        )
    except FileNotFoundError as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 2
    except requests.RequestException as error:
        print(f"simulate: could not reach the gateway at {args.url or default_url()}: {error}", file=sys.stderr)
        return 1
    if result.status != 200:
        print(f"simulate: the gateway answered HTTP {result.status}: {result.body.strip()[:500]}", file=sys.stderr)
        return 1
    print("\n\n".join(result.messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
