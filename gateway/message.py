"""A message as the rest of the gateway sees it, whichever channel it came by.

Each channel reads its own webhook into these (gateway.whatsapp.form for Twilio's form,
gateway.telegram.updates for a Telegram update), validating once, at the edge, every value that ends up in
a storage key (the sender id, the message id); everything after intake (processing, storage, the spool,
privacy, metrics) takes only these. ``to_json`` / ``from_json`` are how the spool keeps one: parsed once by
the webhook, read back by the worker as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sender import InvalidSender, parse_sender_argument

__all__ = ["Conversation", "InboundMessage", "InvalidWebhook", "MediaItem", "from_json", "to_json"]

WHATSAPP = "whatsapp"
TELEGRAM = "telegram"
CHANNELS = (WHATSAPP, TELEGRAM)
# A message carries at most 10 media items (Twilio's limit; a Telegram message carries one).
MAX_MEDIA = 10


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
    """Where an answer sent after the webhook's response goes, on a channel that can send one (Telegram:
    the chat, and the user's message to reply to). WhatsApp has none: without Twilio's REST API the
    webhook's response is the only reply."""

    chat_id: int
    message_id: int


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
        message = InboundMessage(
            message_sid=message_sid, sender_id=sender, profile_name=str(fields["profile_name"]),
            body=str(fields["body"]), message_type=str(fields["message_type"]), media=media, channel=channel,
            conversation=conversation,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidWebhook(f"not a spooled message ({type(error).__name__}: {error})") from None
    if channel not in CHANNELS:
        raise InvalidWebhook(f"spooled by an unknown channel {channel!r}")
    if not message_sid.isascii() or not message_sid.isalnum() or len(message_sid) > 64:
        raise InvalidWebhook("message id is not a safe name")
    if parse_sender_argument(sender) != sender:
        raise InvalidSender("sender id is not one the channels make")
    if len(media) > MAX_MEDIA or [m.index for m in media] != list(range(len(media))):
        raise InvalidWebhook("media items are not numbered 0..n-1")
    return message
