"""A message as the rest of the gateway sees it, whichever channel it came by.

Each channel reads its own webhook into these (gateway.whatsapp.form for Twilio's form,
gateway.telegram.updates for a Telegram update), validating once, at the edge, every value that ends up in
a storage key (the sender id, the message id); everything after intake (processing, storage, the spool,
privacy, metrics) takes only these.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InboundMessage", "InvalidWebhook", "MediaItem"]


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
class InboundMessage:
    message_sid: str
    sender_id: str
    profile_name: str
    body: str
    # Lower-cased message type ("text", "audio", "image", "sticker", "location", "voice", ...); may be "".
    message_type: str
    media: tuple[MediaItem, ...]
