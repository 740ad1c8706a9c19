"""POST /telegram: the Telegram webhook. The secret checked, one sendMessage back in the response body.

Telegram signs nothing: it sends the secret registered with setWebhook in X-Telegram-Bot-Api-Secret-Token,
compared here in constant time before anything is read (403 without it or with a wrong one: nothing parsed,
fetched or stored). The JSON becomes an Update with pyTelegramBotAPI (gateway.telegram.updates), and from
there the message goes the WhatsApp way: privacy commands, the notice on first contact, media handed to the
same intake (gateway.intake: spooled, tried once within the budget), the same sentences (gateway.replies).

The reply is the webhook's response: a Bot API method in the body (``{"method": "sendMessage", ...}``),
which Telegram executes, replying to the user's message; no call out of the gateway, so no token used, for
the reply. Telegram resends an update until it gets a 2xx, so every answer here is a 200, including for
updates it cannot act on (a bad one would otherwise come back forever), except the 403 above. A deferred
outcome (a dependency was down) is sent by the spool worker with sendMessage once known (gateway.intake.worker).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway import metrics, replies
from gateway.budget import Budget
from gateway.config import TELEGRAM_WEBHOOK_PATH, is_loopback_host
from gateway.message import InvalidWebhook
from gateway.privacy import Command, CommandWords, parse_command
from gateway.sender import InvalidSender, mask_phone
from gateway.services import Services
from gateway.telegram.botapi import send_message_params
from gateway.telegram.updates import UNSUPPORTED_KINDS, TelegramMessage, parse_update

logger = logging.getLogger(__name__)

bp = Blueprint("telegram", __name__)
_ALBUMS = "mediabot.telegram_albums"

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"

# Telegram's commands for the privacy words (WhatsApp's MY DATA / DELETE / DELETE ALL work here too).
_COMMANDS = {"/mydata": Command.MY_DATA, "/delete": Command.DELETE, "/delete_all": Command.DELETE_ALL}
# What the privacy replies tell people to send here.
SLASH_WORDS = CommandWords(my_data="/mydata", delete="/delete", delete_all="/delete_all")
HELP = (f"{replies.HELP} Send /mydata to see what I keep of yours, or /delete to erase it.")
PRIVATE_ONLY = "To see or erase what I keep of yours, send me /mydata or /delete in a private chat."


class AlbumReplies:
    """Which sentences each album (chat, media_group_id) was already answered with, for a minute.

    An album of ten selfies arrives as ten updates; ten identical "Saved your photo (1 face found)." would be
    a burst of noise. The first photo of an album to get a given sentence gets it; the others with the same
    sentence get no message, and a different outcome (no face, too big) is still said. Per process and best
    effort: another gunicorn worker or replica may answer the same sentence once more.
    """

    def __init__(self, ttl_s: float = 60.0, max_albums: int = 4096) -> None:
        self._ttl_s = ttl_s
        self._max_albums = max_albums
        self._lock = threading.Lock()
        self._said: OrderedDict[tuple[int, str], tuple[float, set[str]]] = OrderedDict()

    def first(self, chat_id: int, album: str, text: str, now: float | None = None) -> bool:
        """True if this album has not been told ``text`` yet (and remembers it now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._said and (len(self._said) > self._max_albums or next(iter(self._said.values()))[0] < now):
                self._said.popitem(last=False)
            expires, said = self._said.get((chat_id, album), (now + self._ttl_s, set()))
            if text in said:
                return False
            said.add(text)
            self._said[(chat_id, album)] = (expires, said)
            return True


@bp.record_once
def _albums(state) -> None:  # noqa: ANN001 (flask's BlueprintSetupState)
    state.app.extensions[_ALBUMS] = AlbumReplies()


def command_of(text: str) -> str | None:
    """``/start`` for "/start", "/start@MediaBot", "/start payload"; None for anything that is not a command."""
    if not text.startswith("/"):
        return None
    word = text.split(maxsplit=1)[0] if text.strip() else ""
    return word.split("@", 1)[0].lower() or None


@bp.post(TELEGRAM_WEBHOOK_PATH, strict_slashes=False)
def telegram() -> Response:
    started = time.monotonic()
    received_at = datetime.now(UTC)
    services: Services = current_app.extensions["mediabot"]
    settings = services.settings
    refused = _refusal(settings.telegram_webhook_secret, settings.telegram_dev_credentials)
    if refused is not None:
        logger.warning("telegram webhook refused", extra={"reason": refused, "remote_addr": request.remote_addr})
        metrics.record_webhook("bad_signature")  # the secret is what Telegram has instead of a signature
        return Response("forbidden\n", status=403, mimetype="text/plain")

    data = request.get_json(silent=True)
    try:
        found = parse_update(data, max_photo_bytes=settings.max_media_bytes, id_key=settings.telegram_webhook_secret)
    except (InvalidWebhook, InvalidSender) as error:
        chat_id, message_id = _chat_of(data)
        text = replies.INVALID_SENDER if isinstance(error, InvalidSender) else replies.INVALID_MESSAGE
        return _answer(chat_id, message_id, text, "invalid_message", started, detail=str(error))
    if found is None:  # edited_message and anything else that is not a new message: nothing to say
        logger.info("telegram update ignored", extra={"update_id": _update_id(data)})
        return Response(status=200)
    return _handle(found, services, started, received_at)


def _handle(found: TelegramMessage, services: Services, started: float, received_at: datetime) -> Response:
    message = found.inbound
    fields = {"message_sid": message.message_sid, "sender": mask_phone(message.sender_id),
              "message_type": message.message_type}
    privacy = services.privacy
    command = command_of(message.body) if not message.media else None
    if command in ("/start", "/help"):
        return _answer(found.chat_id, found.message_id, HELP, "help", started, **fields)
    privacy_command = _COMMANDS.get(command or "") or (parse_command(message.body) if not message.media else None)
    if privacy_command is not None and found.form.get("ChatType") != "private":
        # In a group, the answer (how much of yours I keep; erase it?) would be read by everyone there.
        return _answer(found.chat_id, found.message_id, PRIVATE_ONLY, "privacy_elsewhere", started, **fields)
    if privacy_command is not None:
        text = privacy.reply(privacy_command, message.sender_id, message.message_sid, SLASH_WORDS)
        return _answer(found.chat_id, found.message_id, text, f"privacy_{privacy_command.value}",
                       started, **fields)
    notice = privacy.notice_if_first(message.sender_id, message.message_sid, SLASH_WORDS)

    if message.message_type in UNSUPPORTED_KINDS:
        return _answer(found.chat_id, found.message_id, replies.unsupported(UNSUPPORTED_KINDS[message.message_type]),
                       "unsupported", started, notice=notice, **fields)
    if not message.media:
        return _answer(found.chat_id, found.message_id, HELP, "text_only", started, notice=notice, **fields)

    metrics.record_media_received(message.media)
    budget = Budget(services.settings.webhook_budget_s)
    answers = services.intake.accept(message, budget, received_at)
    text = replies.combine([answer.sentence for answer in answers])
    outcomes = [answer.log_word for answer in answers]
    album = found.form.get("MediaGroupId") or ""
    said_before = bool(album) and not current_app.extensions[_ALBUMS].first(found.chat_id, album, text)
    if said_before and not notice:
        # Another photo of this album was already answered with these very words.
        return _answer(None, None, text, ",".join(outcomes), started, album_repeat=True, **fields)
    return _answer(found.chat_id, found.message_id, text, ",".join(outcomes), started, notice=notice,
                   album=bool(album), **fields)


def _refusal(secret: str, development: bool) -> str | None:
    """Why this request may not be handled, or None. The secret first, in constant time; the development
    secret is public, so with it only this machine's clients are answered (TRUST_PROXY=0 there: the
    socket's peer, not a header)."""
    given = request.headers.get(SECRET_HEADER, "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode()):
        return "missing secret token" if not given else "wrong secret token"
    if development and not is_loopback_host(request.remote_addr or ""):
        return f"development secret: updates are accepted from this machine only, not {request.remote_addr}"
    return None


def _answer(chat_id: int | None, message_id: int | None, text: str, outcome: str, started: float, *,
            notice: str | None = None, **fields: object) -> Response:
    """The reply as a sendMessage in the response body (the notice, on first contact, as its last
    paragraph: one method per response), logged and counted; an empty 200 when there is no chat to answer."""
    # Counted like WhatsApp's: a message without media to keep (help, a sticker, a location) is text_only.
    metrics.record_webhook_answer("text_only" if outcome in ("help", "unsupported") else outcome, started)
    logger.info("telegram webhook handled",
                extra={**fields, "outcome": outcome, "notice": notice is not None,
                       "elapsed_ms": round((time.monotonic() - started) * 1000, 1)})
    if chat_id is None:
        return Response(status=200)
    full = text if not notice else f"{text}\n\n{notice}"
    return jsonify({"method": "sendMessage", **send_message_params(chat_id, full, reply_to=message_id)})


def _chat_of(data: object) -> tuple[int | None, int | None]:
    """The chat and message of an update that did not parse, if they can be told, to say so to the user."""
    message = data.get("message") if isinstance(data, dict) else None
    chat = message.get("chat") if isinstance(message, dict) else None
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    message_id = message.get("message_id") if isinstance(message, dict) else None
    if type(chat_id) is not int:
        return None, None
    return chat_id, message_id if type(message_id) is int else None


def _update_id(data: object) -> object:
    return data.get("update_id") if isinstance(data, dict) else None


@bp.errorhandler(Exception)
def unexpected_error(error: Exception) -> Response | HTTPException:
    """Anything that escaped the view is logged and still answered with a 200 (Telegram would resend the
    update forever) and a readable sentence when the chat is known (HTTP errors pass through)."""
    if isinstance(error, HTTPException):
        return error
    logger.exception("telegram webhook failed unexpectedly")
    chat_id, message_id = _chat_of(request.get_json(silent=True))
    if chat_id is None:
        return Response(status=200)
    return jsonify({"method": "sendMessage",
                    **send_message_params(chat_id, replies.INTERNAL_ERROR, reply_to=message_id)})
