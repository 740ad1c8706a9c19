"""A message as the rest of the gateway sees it, whichever channel it came by.

Each channel reads its own webhook into these (gateway.whatsapp.form for Twilio's form,
gateway.telegram.updates for a Telegram update), validating once, at the edge, every value that ends up in
a storage key (the sender id, the message id); everything after intake (processing, storage, the spool,
privacy, metrics) takes only these. ``to_json`` / ``from_json`` are how the spool keeps one: parsed once by
the webhook, read back by the worker as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sender import InvalidSender, parse_sender_argument

__all__ = ["Conversation", "InboundMessage", "InvalidWebhook", "MediaItem", "WhatsAppAddresses", "from_json",
           "to_json", "whatsapp_address"]

WHATSAPP = "whatsapp"
TELEGRAM = "telegram"
CHANNELS = (WHATSAPP, TELEGRAM)
# A message carries at most 10 media items (Twilio's limit; a Telegram message carries one).
MAX_MEDIA = 10
# A WhatsApp address as Twilio writes From and To: "whatsapp:" and an E.164 number.
_WHATSAPP_ADDRESS = re.compile(r"whatsapp:\+[1-9][0-9]{5,14}")


class InvalidWebhook(ValueError):
    """A signed webhook whose fields we cannot act on safely; answered with a reply, never a 500."""


@dataclass(frozen=True)
class MediaItem:
    index: int
    # Where the channel keeps the file: an https URL (Twilio), or telegram-file:{file_id} (gateway.telegram).
    url: str
    # Lower-cased, parameters dropped ("audio/ogg; codecs=opus" -> "audio/ogg"); "" when the channel sent none.
    content_type: str


@dataclass(frozen=True)
class Conversation:
    """Where a Telegram answer sent after the webhook's response goes: the chat, and the user's message to
    reply to (gateway.telegram.notify)."""

    chat_id: int
    message_id: int


@dataclass(frozen=True)
class WhatsAppAddresses:
    """Where a WhatsApp answer sent after the webhook's response goes (Twilio's REST API,
    gateway.whatsapp.notify): the user's address (the webhook's From) and the one they wrote to (its To),
    which the answer is sent from. Both "whatsapp:+<digits>"."""

    user: str
    bot: str


def whatsapp_address(value: str) -> str | None:
    """``value`` if it is a WhatsApp address Twilio would write ("whatsapp:+14155238886"), else None."""
    value = value.strip()
    return value if _WHATSAPP_ADDRESS.fullmatch(value) else None


@dataclass(frozen=True)
class InboundMessage:
    message_sid: str
    sender_id: str
    profile_name: str
    body: str
    # Lower-cased message type ("text", "audio", "image", "sticker", "location", "voice", ...); may be "".
    message_type: str
    media: tuple[MediaItem, ...]
    channel: str = WHATSAPP
    conversation: Conversation | None = None
    # WhatsApp only; None when the webhook's From or To was not a WhatsApp address, or for an entry spooled
    # before the addresses were kept (no deferred answer can be sent then).
    whatsapp: WhatsAppAddresses | None = None


def to_json(message: InboundMessage) -> dict[str, object]:
    """The message as JSON-ready fields (what the spool writes on an entry's first line)."""
    fields: dict[str, object] = {
        "channel": message.channel,
        "message_sid": message.message_sid,
        "sender_id": message.sender_id,
        "profile_name": message.profile_name,
        "body": message.body,
        "message_type": message.message_type,
        "media": [{"index": m.index, "url": m.url, "content_type": m.content_type} for m in message.media],
    }
    if message.conversation is not None:
        fields["conversation"] = {"chat_id": message.conversation.chat_id,
                                  "message_id": message.conversation.message_id}
    if message.whatsapp is not None:
        fields["whatsapp"] = {"user": message.whatsapp.user, "bot": message.whatsapp.bot}
    return fields


def from_json(fields: Mapping[str, object]) -> InboundMessage:
    """The message ``to_json`` wrote; InvalidWebhook (or InvalidSender) for fields it could not have written.

    Checked again on the way back, because the ids become storage keys and file names: a spool file is on
    a disk other processes share, and this is cheap."""
    try:
        channel = str(fields["channel"])
        message_sid = str(fields["message_sid"])
        sender = str(fields["sender_id"])
        media = tuple(
            MediaItem(index=int(m["index"]), url=str(m["url"]), content_type=str(m["content_type"]))
            for m in fields["media"]  # type: ignore[attr-defined]
        )
        raw_conversation = fields.get("conversation")
        conversation = (
            None if raw_conversation is None
            else Conversation(int(raw_conversation["chat_id"]), int(raw_conversation["message_id"]))  # type: ignore[index]
        )
        raw_whatsapp = fields.get("whatsapp")  # absent in entries spooled before it was kept
        whatsapp = (
            None if raw_whatsapp is None
            else WhatsAppAddresses(str(raw_whatsapp["user"]), str(raw_whatsapp["bot"]))  # type: ignore[index]
        )
        message = InboundMessage(
            message_sid=message_sid, sender_id=sender, profile_name=str(fields["profile_name"]),
            body=str(fields["body"]), message_type=str(fields["message_type"]), media=media, channel=channel,
            conversation=conversation, whatsapp=whatsapp,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidWebhook(f"not a spooled message ({type(error).__name__}: {error})") from None
    if channel not in CHANNELS:
        raise InvalidWebhook(f"spooled by an unknown channel {channel!r}")
    if not message_sid.isascii() or not message_sid.isalnum() or len(message_sid) > 64:
        raise InvalidWebhook("message id is not a safe name")
    if parse_sender_argument(sender) != sender:
        raise InvalidSender("sender id is not one the channels make")
    if whatsapp is not None and (whatsapp_address(whatsapp.user) is None or whatsapp_address(whatsapp.bot) is None):
        raise InvalidWebhook("WhatsApp addresses are not ones the webhook keeps")
    if len(media) > MAX_MEDIA or [m.index for m in media] != list(range(len(media))):
        raise InvalidWebhook("media items are not numbered 0..n-1")
    return message
