"""A Telegram update, read into the same validated InboundMessage the WhatsApp webhook makes.

The update's JSON is turned into Bot API objects by pyTelegramBotAPI (``telebot.types.Update.de_json``),
then the few fields the bot acts on are taken out into a flat form of strings, like Twilio's webhook form:

    MessageSid, UpdateId, ChatId, ChatType, MessageId, UserId, FirstName, MessageType (voice, audio, document, photo,
    sticker, video, text, ...), Text, FileId, FileSize, ContentType, MediaGroupId

``inbound_from_form`` reads that form into the InboundMessage (channel "telegram", the chat and message to
reply to as its Conversation), which is what is spooled. Spool entries written before the spool kept the
message hold this form instead (``channel: telegram``) and are read back through ``inbound_from_form`` too
(gateway.intake.channels). The form holds the file_id, never a file URL (those carry the bot token:
gateway.telegram.botapi resolves the file with getFile when it is processed), and nothing of the user's
profile beyond the first name the metadata keeps for WhatsApp too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from telebot import types

from gateway.message import TELEGRAM, Conversation, InboundMessage, InvalidWebhook, MediaItem
from gateway.sender import InvalidSender, telegram_sender_id

# MediaItem.url of a Telegram file: the file_id, resolved with getFile by gateway.telegram.botapi.
FILE_SCHEME = "telegram-file:"
# file_ids are URL-safe base64 (Bot API: "Identifier for this file"); bounded so it fits a log line.
_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
# Chat and message ids fit 52 bits (the Bot API's promise for ids); message ids are positive.
_ID_LIMIT = 2**52
# The id stored in place of a MessageSid (see message_id): the shape of a Twilio SID, with its own prefix.
_MESSAGE_SID = re.compile(r"TG[0-9a-f]{32}")

# Kinds carrying a file the bot may keep; the rest are answered without downloading anything.
MEDIA_KINDS = ("voice", "audio", "document", "photo")
# What the WhatsApp replies call the kinds the bot does not keep (gateway.replies.unsupported).
UNSUPPORTED_KINDS = {
    "sticker": "stickers", "video": "videos", "video_note": "video messages", "animation": "animations",
    "location": "locations", "venue": "locations", "contact": "contact cards", "poll": "polls", "dice": "dice",
}

__all__ = ["FILE_SCHEME", "TelegramMessage", "inbound_from_form", "message_id", "parse_update"]


@dataclass(frozen=True)
class TelegramMessage:
    """A new message from a user: what is spooled (``form``) and what it says (``inbound``)."""

    form: dict[str, str]
    inbound: InboundMessage
    chat_id: int
    message_id: int


def message_id(chat_id: int, message_id: int, key: str) -> str:
    """The id stored in place of a MessageSid: ``TG`` and 32 hex digits of an HMAC of the chat id and
    message id, keyed with the webhook secret.

    Telegram re-sends an update until it gets a 2xx, and chat id + message id are what every copy shares, so
    this is what makes a resend land on the entry and the object already there. Not the ids themselves: in a
    private chat the chat id is the user's id, and this id is on every log line about the message (like a
    MessageSid), where a WhatsApp number shows only its last four digits. Keyed, because a plain hash of
    such small numbers is undone by trying them all. Rotating TELEGRAM_WEBHOOK_SECRET changes the ids: an
    update Telegram still resends across the rotation may be stored a second time.
    """
    digest = hmac.new(key.encode(), f"{chat_id}:{message_id}".encode(), hashlib.sha256).hexdigest()
    return "TG" + digest[:32]


def parse_update(data: object, *, max_photo_bytes: int, id_key: str) -> TelegramMessage | None:
    """The message an update brings, or None when it brings none to answer (an ``edited_message``, a
    channel post, a callback...). InvalidWebhook / InvalidSender when the update cannot be acted on.
    ``id_key`` keys the message's id (``message_id``): the webhook secret."""
    if not isinstance(data, dict):
        raise InvalidWebhook("the update is not a JSON object")
    if "message" not in data:
        return None
    try:
        update = types.Update.de_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidWebhook(f"the update is not a Bot API Update ({type(error).__name__})") from None
    message = update.message if update is not None else None
    if message is None:
        return None
    if message.from_user is None:
        raise InvalidSender("the message has no from (a channel or anonymous admin)")
    telegram_sender_id(message.from_user.id)  # a JSON integer, not a string of digits
    chat_id = _id(message.chat.id, "chat.id", minimum=-_ID_LIMIT)
    message_number = _id(message.message_id, "message_id", minimum=1)
    form = {
        "MessageSid": message_id(int(chat_id), int(message_number), id_key),
        "UpdateId": _id(update.update_id, "update_id", minimum=0),
        "ChatId": chat_id,
        "ChatType": str(message.chat.type or "")[:16],
        "MessageId": message_number,
        "UserId": str(message.from_user.id),
        "FirstName": (message.from_user.first_name or "")[:64],
        "MessageType": str(message.content_type or ""),
        "Text": message.text or "",
        "MediaGroupId": str(message.media_group_id or "")[:64],
    }
    media = _media(message, max_photo_bytes)
    if media is not None:
        file_id, file_size, content_type = media
        form.update({"FileId": file_id, "FileSize": str(file_size or ""), "ContentType": content_type})
    found = inbound_from_form(form)  # the same checks as on the spooled form
    return TelegramMessage(form=form, inbound=found, chat_id=int(form["ChatId"]),
                           message_id=int(form["MessageId"]))


def inbound_from_form(form: Mapping[str, str]) -> InboundMessage:
    """The InboundMessage of a spooled Telegram form (see the module docstring); raises InvalidWebhook or
    InvalidSender on a value that could steer a key, a file name or a URL."""
    user_id = form.get("UserId") or ""
    if not user_id.isascii() or not user_id.isdigit():
        raise InvalidSender("from.id is not a Telegram user id")
    sender = telegram_sender_id(int(user_id))
    chat_id, message = _int(form.get("ChatId"), "ChatId"), _int(form.get("MessageId"), "MessageId")
    if not (-_ID_LIMIT < chat_id < _ID_LIMIT and 0 < message < _ID_LIMIT):
        raise InvalidWebhook("chat or message id out of range")
    message_sid = form.get("MessageSid") or ""
    if not _MESSAGE_SID.fullmatch(message_sid):
        raise InvalidWebhook("MessageSid is not a Telegram message id (TG and 32 hex digits)")
    media: tuple[MediaItem, ...] = ()
    file_id = form.get("FileId") or ""
    if file_id:
        if not _FILE_ID.fullmatch(file_id):
            raise InvalidWebhook("file_id is not a Bot API file id")
        media = (MediaItem(index=0, url=FILE_SCHEME + file_id, content_type=form.get("ContentType") or ""),)
    return InboundMessage(
        message_sid=message_sid,
        sender_id=sender,
        profile_name=form.get("FirstName") or "",
        body=form.get("Text") or "",
        message_type=(form.get("MessageType") or "").lower(),
        media=media,
        channel=TELEGRAM,
        conversation=Conversation(chat_id=chat_id, message_id=message),
    )


def dumps(form: Mapping[str, str]) -> str:
    """The form as one log-safe line (tests and the simulator print it)."""
    return json.dumps(dict(form), separators=(",", ":"), sort_keys=True)


def _media(message: types.Message, max_photo_bytes: int) -> tuple[str, int | None, str] | None:
    """(file_id, declared size, content type) of the file the message carries, if it is one to judge."""
    kind = message.content_type
    if kind == "voice" and message.voice is not None:
        return message.voice.file_id, message.voice.file_size, _mime(message.voice.mime_type, "audio/ogg")
    if kind == "audio" and message.audio is not None:
        return message.audio.file_id, message.audio.file_size, _mime(message.audio.mime_type, "audio/mpeg")
    if kind == "document" and message.document is not None:
        document = message.document
        return document.file_id, document.file_size, _mime(document.mime_type, "application/octet-stream")
    if kind == "photo" and message.photo:
        return _largest_photo(message.photo, max_photo_bytes)
    return None


def _largest_photo(sizes: list[types.PhotoSize], max_bytes: int) -> tuple[str, int | None, str]:
    """The largest PhotoSize within the size cap (Telegram sends each photo in several sizes); the
    smallest one when none fits, so the reply says it is too big rather than nothing."""
    ordered = sorted(sizes, key=lambda size: (size.width or 0) * (size.height or 0))
    fitting = [size for size in ordered if size.file_size is None or size.file_size <= max_bytes]
    chosen = fitting[-1] if fitting else ordered[0]
    # Telegram re-encodes every photo it delivers as a JPEG.
    return chosen.file_id, chosen.file_size, "image/jpeg"


def _mime(value: str | None, default: str) -> str:
    return (value or default).split(";", 1)[0].strip().lower()[:100]


def _id(value: object, name: str, *, minimum: int) -> str:
    if type(value) is not int or not minimum <= value < _ID_LIMIT:
        raise InvalidWebhook(f"{name} is not a Bot API id")
    return str(value)


def _int(value: str | None, name: str) -> int:
    text = value or ""
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise InvalidWebhook(f"{name} is not a number")
    return int(text)
