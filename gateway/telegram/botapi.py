"""The gateway's calls to the Telegram Bot API: getFile, the file download, sendMessage.

Why these three by hand (with requests) rather than through pyTelegramBotAPI's ``apihelper``, which the
rest of the package uses for the Bot API types and the set-webhook command: its URLs and HTTP session are
process-wide globals (one Bot API server per process, while the tests run several), it reads a file whole
with no size cap or deadline, and a failed request raises requests' own exception, whose text holds the URL
and so the bot token. Here:
- the token is in the URL of every call (``/bot{token}/getFile``, ``/file/bot{token}/{file_path}``), so it
  never leaves this module: errors name the method and the failure, never a URL or requests' message, and
  urllib3's debug log line (which prints the request path) has the token masked by a logging filter;
- only the configured Bot API host is fetched (TELEGRAM_API_BASE_URL), with the same public-address check
  as Twilio's media hosts, no redirects followed and no proxy or ~/.netrc from the environment;
- ``file_path`` from getFile is checked before it goes into a URL: relative, no ``..``, no scheme (a
  self-hosted Bot API in ``--local`` mode answers absolute paths on its own disk: refused);
- downloads keep the project's cap (MAX_MEDIA_BYTES; Telegram's own is 20 MB), checked on the declared size
  first and while streaming, and every read is cut to the webhook's budget.
Failures are DownloadErrors, so gateway.processing answers them exactly like a Twilio media failure.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from telebot import types

from gateway.budget import Budget
from gateway.download import DownloadError, Downloaded, Failure, MediaDownloader, read_capped, vet_url
from gateway.telegram.updates import FILE_SCHEME

logger = logging.getLogger(__name__)

# getFile's file_path: "documents/file_3.pdf", "voice/file_12.oga", "photos/file_0.jpg".
_FILE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}){0,7}")
_MASK = "<bot-token>"


class TokenMask(logging.Filter):
    """Masks the bot token in records of the logger it is attached to (urllib3 logs request paths at DEBUG)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._token in message:
            record.msg, record.args = message.replace(self._token, _MASK), ()
        return True


_masks_lock = threading.Lock()
_masked_tokens: set[str] = set()


def mask_token_in_library_logs(token: str) -> None:
    """Attach a TokenMask for ``token`` to the loggers of the HTTP libraries that print request URLs (once)."""
    with _masks_lock:
        if token in _masked_tokens:
            return
        _masked_tokens.add(token)
        for name in ("urllib3.connectionpool", "urllib3.util.retry", "TeleBot"):
            logging.getLogger(name).addFilter(TokenMask(token))


class BotApiError(Exception):
    """A Bot API call failed; the message names the method and why, never a URL (it would hold the token)."""

    def __init__(self, method: str, failure: Failure, detail: str) -> None:
        super().__init__(f"{method}: {detail}")
        self.failure = failure


class BotApi:
    """Long-lived (one per app or worker): the connection pool to the Bot API server."""

    def __init__(
        self,
        *,
        token: str,
        base_url: str,
        max_bytes: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        allow_private: bool = False,
    ) -> None:
        self._token = token
        self._base_url = base_url.rstrip("/")
        self._host = (urlsplit(self._base_url).hostname or "").lower()
        self._max_bytes = max_bytes
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._allow_private = allow_private
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or ~/.netrc from the environment; redirects: never followed
        mask_token_in_library_logs(token)

    def __repr__(self) -> str:
        return f"BotApi(base_url={self._base_url!r})"

    def close(self) -> None:
        self._session.close()

    def redact(self, text: str) -> str:
        return text.replace(self._token, _MASK)

    # -- methods --------------------------------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, object], budget: Budget) -> Any:
        """A Bot API method's ``result``; BotApiError on a failure (Telegram's or the connection's)."""
        url = f"{self._base_url}/bot{self._token}/{method}"
        self._vet(url, method)
        timeout = (budget.cap(self._connect_timeout_s), budget.cap(self._read_timeout_s))
        if budget.expired():
            raise BotApiError(method, Failure.TIMEOUT, "no time left")
        try:
            response = self._session.post(url, json=dict(params), timeout=timeout, allow_redirects=False)
        except requests.Timeout:
            raise BotApiError(method, Failure.TIMEOUT, "no answer in time") from None
        except requests.RequestException as error:
            raise BotApiError(method, Failure.CONNECTION, f"request failed ({type(error).__name__})") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 200 and isinstance(answer, dict) and answer.get("ok") is True:
            return answer.get("result")
        description = answer.get("description") if isinstance(answer, dict) else None
        detail = f"HTTP {response.status_code}" + (f": {self.redact(str(description))[:200]}" if description else "")
        status = response.status_code
        if status in (401, 403, 404):  # a wrong token reads as 401 or 404; 403: the user blocked the bot
            failure = Failure.REFUSED
        elif status == 429 or status >= 500:
            failure = Failure.SERVER_ERROR
        elif status == 400 and "file is too big" in str(description).lower():
            failure = Failure.TOO_LARGE
        else:
            failure = Failure.HTTP_ERROR
        raise BotApiError(method, failure, detail)

    def get_file(self, file_id: str, budget: Budget) -> types.File:
        result = self.call("getFile", {"file_id": file_id}, budget)
        if not isinstance(result, dict):
            raise BotApiError("getFile", Failure.HTTP_ERROR, "the answer holds no File")
        try:
            return types.File.de_json(result)
        except (KeyError, TypeError, ValueError):
            raise BotApiError("getFile", Failure.HTTP_ERROR, "the answer holds no File") from None

    def send_message(self, chat_id: int, text: str, budget: Budget, *, reply_to: int | None = None) -> None:
        self.call("sendMessage", send_message_params(chat_id, text, reply_to=reply_to), budget)

    def fetch(self, url: str, budget: Budget, on_length: Callable[[int], None] | None = None) -> Downloaded:
        """A Telegram file named by ``telegram-file:{file_id}`` (gateway.telegram.updates): getFile, checks,
        then the download; DownloadError on any failure, as gateway.processing expects. ``on_length`` as in
        MediaDownloader.fetch: told the body's size before it is read (gateway.media_memory)."""
        if not url.startswith(FILE_SCHEME):
            raise DownloadError(Failure.DISALLOWED_URL, "not a Telegram file")
        try:
            file = self.get_file(url[len(FILE_SCHEME):], budget)
        except BotApiError as error:
            raise DownloadError(error.failure, str(error)) from None
        if file.file_size is not None and file.file_size > self._max_bytes:
            raise DownloadError(Failure.TOO_LARGE, f"file_size {file.file_size} is over {self._max_bytes}")
        path = file.file_path or ""
        if not _FILE_PATH.fullmatch(path) or ".." in path:
            raise DownloadError(Failure.DISALLOWED_URL, "getFile answered a file_path that is not a relative path")
        return self._download(f"{self._base_url}/file/bot{self._token}/{path}", budget, on_length)

    # -- internals ------------------------------------------------------------------------------------

    def _vet(self, url: str, method: str) -> None:
        try:
            vet_url(url, frozenset({self._host}), allow_private=self._allow_private)
        except DownloadError as error:
            raise BotApiError(method, error.failure, error.detail) from None

    def _download(self, url: str, budget: Budget, on_length: Callable[[int], None] | None) -> Downloaded:
        try:
            self._vet(url, "file")
        except BotApiError as error:
            raise DownloadError(error.failure, str(error)) from None
        if budget.expired():
            raise DownloadError(Failure.TIMEOUT, "no time left in the webhook budget")
        timeout = (budget.cap(self._connect_timeout_s), budget.cap(self._read_timeout_s))
        try:
            with self._session.get(url, stream=True, timeout=timeout, allow_redirects=False,
                                   headers={"Accept-Encoding": "identity"}) as response:
                status = response.status_code
                if status != 200:  # a redirect too: another host is not the configured Bot API
                    failure = (Failure.NOT_FOUND if status == 404 else Failure.REFUSED if status in (401, 403)
                               else Failure.SERVER_ERROR if status >= 500 else Failure.HTTP_ERROR)
                    raise DownloadError(failure, f"file: HTTP {status}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise DownloadError(Failure.TOO_LARGE, f"Content-Length {declared} is over {self._max_bytes}")
                if on_length is not None:
                    on_length(int(declared) if declared.isdigit() else self._max_bytes)
                body = read_capped(response, budget, max_bytes=self._max_bytes, read_timeout_s=self._read_timeout_s)
                content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                return Downloaded(data=body, content_type=content_type, attempts=1)
        except requests.Timeout:
            raise DownloadError(Failure.TIMEOUT, "file: no answer in time") from None
        except requests.RequestException as error:
            raise DownloadError(Failure.CONNECTION, f"file: request failed ({type(error).__name__})") from None


def send_message_params(chat_id: int, text: str, *, reply_to: int | None = None) -> dict[str, object]:
    """sendMessage's parameters: a reply to the user's message when there is one (and still sent if that
    message was deleted meanwhile)."""
    params: dict[str, object] = {"chat_id": chat_id, "text": text[:4096]}
    if reply_to is not None:
        params["reply_parameters"] = {"message_id": reply_to, "allow_sending_without_reply": True}
    return params


class MediaFetcher:
    """What gateway.processing downloads media with: Twilio's MediaDownloader for WhatsApp's media URLs, the
    Bot API for ``telegram-file:`` ones. Only gateway.telegram.updates makes those, from a verified update."""

    def __init__(self, twilio: MediaDownloader, telegram: BotApi | None) -> None:
        self._twilio = twilio
        self._telegram = telegram

    def fetch(self, url: str, budget: Budget, on_length: Callable[[int], None] | None = None) -> Downloaded:
        if url.startswith(FILE_SCHEME):
            if self._telegram is None:
                raise DownloadError(Failure.DISALLOWED_URL, "Telegram is not configured (TELEGRAM_BOT_TOKEN)")
            return self._telegram.fetch(url, budget, on_length)
        return self._twilio.fetch(url, budget, on_length)

    def close(self) -> None:
        self._twilio.close()
        if self._telegram is not None:
            self._telegram.close()
