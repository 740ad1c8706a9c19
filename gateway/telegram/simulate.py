"""Play Telegram without a phone: a local Bot API server, and real-shaped updates posted to the gateway.

    python -m gateway.telegram.simulate [--from USER_ID] voice.ogg photo.jpg

Each file becomes one message, as in the Telegram apps: ``.ogg``/``.oga``/``.opus`` a voice note, other
audio an ``audio``, ``.jpg``/``.jpeg`` a ``photo`` (in two PhotoSizes, as Telegram sends them), ``.mp4`` a
video, anything else a ``document`` with its type. The updates carry the secret in
X-Telegram-Bot-Api-Secret-Token; the gateway fetches the files from this Bot API (getFile, then
``/file/bot{token}/{file_path}``) and answers with a sendMessage in its response body, whose text is printed.
With no configuration it plays the development bot `make run` accepts (gateway.config: the development token
and secret, the Bot API on 127.0.0.1:8081); with TELEGRAM_* in .env run it under ``honcho run`` (and a
loopback TELEGRAM_API_BASE_URL on the gateway, since the files are served here).

Tests use ``LocalBotApi`` (which records what the gateway asked and can be told to fail) and ``send_update``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import mimetypes
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from gateway.config import (
    DEV_TELEGRAM_API_BASE_URL,
    DEV_TELEGRAM_BOT_TOKEN,
    DEV_TELEGRAM_WEBHOOK_SECRET,
    TELEGRAM_WEBHOOK_PATH,
    default_public_base_url,
)
from gateway.stack_ready import wait_until_serving
from gateway.whatsapp.simulate import guess_content_type, serving_in_thread
from gateway.telegram.webhook import SECRET_HEADER

DEFAULT_USER_ID = 555000111
DEFAULT_FIRST_NAME = "Simulated"
_VOICE_SUFFIXES = (".ogg", ".oga", ".opus")
_PHOTO_SUFFIXES = (".jpg", ".jpeg")
_update_ids = itertools.count(int(time.time()) % 1_000_000 * 1000)
_message_ids = itertools.count(int(time.time()) % 100_000 * 100 + 1)


@dataclass
class ServedFile:
    data: bytes
    file_path: str


@dataclass
class LocalBotApi:
    """What the gateway sees of Telegram's Bot API, on 127.0.0.1: getFile, the files, sendMessage,
    setWebhook / deleteWebhook / getWebhookInfo. ``fail_with`` makes every method answer that HTTP status."""

    token: str
    files: dict[str, ServedFile] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # method names, and "file" for each download
    webhook: dict[str, Any] = field(default_factory=dict)
    fail_with: int | None = None
    # Overrides getFile's file_path per file_id (hostile answers: "../x", "/var/x", "http://...").
    file_paths: dict[str, str] = field(default_factory=dict)
    # Answers a file's download with a redirect to this URL instead of the bytes (per file_id).
    redirects: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def add(self, data: bytes, suffix: str, folder: str) -> str:
        """Serve ``data`` under a new file_id and return it."""
        file_id = "AgAC" + secrets.token_urlsafe(24)
        with self.lock:
            self.files[file_id] = ServedFile(data, f"{folder}/file_{len(self.files)}{suffix}")
        return file_id

    def handle(self, method: str, path: str, params: Mapping[str, Any]) -> tuple[int, Any]:
        """(status, JSON answer or bytes) for one request."""
        with self.lock:
            self.calls.append("file" if path.startswith("/file/") else method)
        if self.fail_with is not None:
            return self.fail_with, {"ok": False, "error_code": self.fail_with, "description": "simulated failure"}
        if path.startswith(f"/file/bot{self.token}/"):
            wanted = path[len(f"/file/bot{self.token}/"):]
            for file_id, served in self.files.items():
                if served.file_path == wanted:
                    if file_id in self.redirects:
                        return 302, {"location": self.redirects[file_id]}
                    return 200, served.data
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        if not path.startswith(f"/bot{self.token}/"):
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        if method == "getFile":
            served = self.files.get(str(params.get("file_id")))
            if served is None:
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"}
            file_path = self.file_paths.get(str(params.get("file_id")), served.file_path)
            return 200, {"ok": True, "result": {"file_id": params["file_id"], "file_unique_id": "u" + file_path[-8:],
                                                "file_size": len(served.data), "file_path": file_path}}
        if method == "sendMessage":
            with self.lock:
                self.sent.append(dict(params))
            return 200, {"ok": True, "result": {"message_id": 1, "date": int(time.time()),
                                                "chat": {"id": params.get("chat_id"), "type": "private"},
                                                "text": params.get("text")}}
        if method == "setWebhook":
            self.webhook = {"url": params.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0,
                            "allowed_updates": params.get("allowed_updates") or [],
                            "secret_token": params.get("secret_token")}
            return 200, {"ok": True, "result": True, "description": "Webhook was set"}
        if method == "deleteWebhook":
            self.webhook = {}
            return 200, {"ok": True, "result": True, "description": "Webhook was deleted"}
        if method == "getWebhookInfo":
            info = {k: v for k, v in self.webhook.items() if k != "secret_token"}
            return 200, {"ok": True, "result": info or {"url": "", "has_custom_certificate": False,
                                                        "pending_update_count": 0}}
        if method == "getMe":
            return 200, {"ok": True, "result": {"id": int(self.token.split(":")[0]), "is_bot": True,
                                                "first_name": "MediaBot", "username": "mediabot_local_bot"}}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}


class _Handler(BaseHTTPRequestHandler):
    server: _BotApiServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self._serve({})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        params: dict[str, Any] = {}
        if "json" in (self.headers.get("Content-Type") or ""):
            params = json.loads(raw or b"{}")
        self._serve(params)

    def _serve(self, params: dict[str, Any]) -> None:
        from urllib.parse import parse_qsl

        parts = urlsplit(self.path)
        path = parts.path
        query = dict(parse_qsl(parts.query))  # pyTelegramBotAPI sends a method's parameters in the query
        if "allowed_updates" in query:
            query["allowed_updates"] = json.loads(query["allowed_updates"])
        params = {**query, **params}
        status, answer = self.server.api.handle(path.rsplit("/", 1)[-1], path, params)
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", answer["location"])
        self.send_header("Content-Type", "application/octet-stream" if isinstance(answer, bytes) else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _BotApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: LocalBotApi, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.api = api
        api.base_url = f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve_bot_api(token: str, port: int = 0) -> Iterator[LocalBotApi]:
    """A LocalBotApi on 127.0.0.1:``port`` (0: a free one; its ``base_url`` says which) while the block runs."""
    api = LocalBotApi(token=token)
    with serving_in_thread(_BotApiServer(api, port), "simulated-telegram-bot-api"):
        yield api


def message_update(user_id: int, *, chat_id: int | None = None, message_id: int | None = None,
                   first_name: str = DEFAULT_FIRST_NAME, **content: object) -> dict[str, Any]:
    """An Update carrying one new message from ``user_id`` in its private chat (or ``chat_id``)."""
    chat = chat_id if chat_id is not None else user_id
    return {
        "update_id": next(_update_ids),
        "message": {
            "message_id": message_id if message_id is not None else next(_message_ids),
            "from": {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"},
            "chat": {"id": chat, "type": "private" if chat == user_id else "group", "first_name": first_name},
            "date": int(time.time()),
            **content,
        },
    }


def file_content(api: LocalBotApi, path: Path, *, as_document: bool = False) -> dict[str, Any]:
    """The message fields Telegram sends for ``path`` sent from an app (served by ``api``)."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    content_type = guess_content_type(path)
    size = len(data)
    if not as_document and suffix in _VOICE_SUFFIXES:
        file_id = api.add(data, ".oga", "voice")
        return {"voice": {"file_id": file_id, "file_unique_id": file_id[-12:], "duration": 1,
                          "mime_type": "audio/ogg", "file_size": size}}
    if not as_document and content_type.startswith("audio/"):
        file_id = api.add(data, suffix, "music")
        return {"audio": {"file_id": file_id, "file_unique_id": file_id[-12:], "duration": 1,
                          "mime_type": content_type, "file_size": size, "file_name": path.name}}
    if not as_document and suffix in _PHOTO_SUFFIXES:
        small, large = api.add(data, ".jpg", "photos"), api.add(data, ".jpg", "photos")
        return {"photo": [
            {"file_id": small, "file_unique_id": small[-12:], "width": 90, "height": 90, "file_size": size},
            {"file_id": large, "file_unique_id": large[-12:], "width": 1280, "height": 1280, "file_size": size},
        ]}
    if not as_document and content_type.startswith("video/"):
        file_id = api.add(data, suffix, "videos")
        return {"video": {"file_id": file_id, "file_unique_id": file_id[-12:], "width": 640, "height": 480,
                          "duration": 1, "mime_type": content_type, "file_size": size}}
    file_id = api.add(data, suffix, "documents")
    return {"document": {"file_id": file_id, "file_unique_id": file_id[-12:], "file_name": path.name,
                         "mime_type": content_type or mimetypes.guess_type(path.name)[0] or "", "file_size": size}}


@dataclass(frozen=True)
class UpdateResult:
    status: int
    body: str
    elapsed_s: float

    @property
    def reply(self) -> dict[str, Any] | None:
        """The Bot API method in the response body, if there is one."""
        try:
            answer = json.loads(self.body)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) and "method" in answer else None

    @property
    def text(self) -> str:
        return str((self.reply or {}).get("text", ""))


def send_update(url: str, update: Mapping[str, Any], secret: str | None, *, timeout_s: float = 20.0) -> UpdateResult:
    """POST ``update`` to the gateway as Telegram does (JSON, the secret header unless ``secret`` is None)."""
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    with requests.Session() as session:
        session.trust_env = False
        started = time.perf_counter()
        response = session.post(url, json=dict(update), headers=headers, timeout=timeout_s)
        return UpdateResult(response.status_code, response.text, time.perf_counter() - started)


def default_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("PUBLIC_BASE_URL") or default_public_base_url(env)).rstrip("/") + TELEGRAM_WEBHOOK_PATH


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.telegram.simulate",
        description="Send files to the gateway as Telegram messages, serving them from a local Bot API.",
    )
    parser.add_argument("files", nargs="*", type=Path, help="one message per file (none: --text alone)")
    parser.add_argument("--from", dest="user_id", type=int, default=DEFAULT_USER_ID,
                        help=f"the sender's Telegram user id (default {DEFAULT_USER_ID})")
    parser.add_argument("--text", default=None, help="a text message (e.g. /start, /mydata, /delete)")
    parser.add_argument("--document", action="store_true", help="send the files as documents, not voice/photo")
    parser.add_argument("--url", default=None, help=f"webhook URL (default {default_url()})")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each reply (default 20)")
    parser.add_argument("--wait", type=float, default=60.0, metavar="S",
                        help="seconds to wait first for the gateway's backends to be serving (default 60; 0: don't)")
    args = parser.parse_args(argv)
    if not args.files and args.text is None:
        parser.error("give files, --text, or both")
    token = os.environ.get("TELEGRAM_BOT_TOKEN") or DEV_TELEGRAM_BOT_TOKEN
    secret = os.environ.get("TELEGRAM_WEBHOOK_SECRET") or DEV_TELEGRAM_WEBHOOK_SECRET
    base = urlsplit(os.environ.get("TELEGRAM_API_BASE_URL") or DEV_TELEGRAM_API_BASE_URL)
    if base.hostname not in ("127.0.0.1", "localhost"):
        print("simulate: TELEGRAM_API_BASE_URL must be on this machine (the files are served here)", file=sys.stderr)
        return 2
    url = args.url or default_url()
    for path in args.files:
        if not path.is_file():
            print(f"simulate: no such file: {path}", file=sys.stderr)
            return 2
    if args.wait > 0:
        wait_until_serving(url, args.wait)
    try:
        with serve_bot_api(token, base.port or 80) as api:
            contents = [file_content(api, path, as_document=args.document) for path in args.files]
            if args.text is not None:
                contents.append({"text": args.text})
            for content in contents:
                result = send_update(url, message_update(args.user_id, **content), secret, timeout_s=args.timeout)
                if result.status != 200:
                    print(f"simulate: the gateway answered HTTP {result.status}: {result.body.strip()[:300]}",
                          file=sys.stderr)
                    return 1
                print(result.text or "(no reply)")
    except requests.RequestException as error:  # before OSError: requests' errors are OSErrors too
        print(f"simulate: could not reach the gateway at {url}: {type(error).__name__}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"simulate: could not serve the Bot API on {base.netloc}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
