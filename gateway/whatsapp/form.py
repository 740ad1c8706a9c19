"""The WhatsApp webhook form, read into one validated object before anything acts on it.

Twilio posts application/x-www-form-urlencoded fields; the ones used here are From, To, WaId,
ProfileName, Body, NumMedia, MediaUrl{N}, MediaContentType{N} (N = 0..9), MessageSid, AccountSid and
MessageType. Values that end up in storage keys (sender id, MessageSid) are validated here, once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.message import MAX_MEDIA, InboundMessage, InvalidWebhook, MediaItem, WhatsAppAddresses, whatsapp_address
from gateway.sender import sender_id

# Twilio's Message resource: "^(SM|MM)[0-9a-fA-F]{32}$" (SM for text, MM for media).
_MESSAGE_SID = re.compile(r"(?:SM|MM)[0-9a-fA-F]{32}")

__all__ = ["MAX_MEDIA", "parse_webhook"]


def parse_webhook(form: Mapping[str, str]) -> InboundMessage:
    """Validate and collect the fields; raises InvalidWebhook (or its sibling InvalidSender) on bad values."""
    message_sid = (form.get("MessageSid") or "").strip()
    if not _MESSAGE_SID.fullmatch(message_sid):
        raise InvalidWebhook("MessageSid is not a Twilio message SID")
    sender = sender_id(form)

    raw_count = (form.get("NumMedia") or "0").strip()
    if not raw_count.isascii() or not raw_count.isdigit():
        raise InvalidWebhook(f"NumMedia is not a number: {raw_count[:20]!r}")
    count = min(int(raw_count), MAX_MEDIA)
    media = tuple(
        MediaItem(
            index=n,
            url=(form.get(f"MediaUrl{n}") or "").strip(),
            content_type=_content_type(form.get(f"MediaContentType{n}") or ""),
        )
        for n in range(count)
    )
    return InboundMessage(
        message_sid=message_sid,
        sender_id=sender,
        profile_name=(form.get("ProfileName") or "").strip(),
        body=form.get("Body") or "",
        message_type=(form.get("MessageType") or "").strip().lower(),
        media=media,
        whatsapp=_addresses(form),
    )


def _addresses(form: Mapping[str, str]) -> WhatsAppAddresses | None:
    """From and To, for an answer sent later through Twilio's REST API (swapped: from the bot to the user);
    None when either is not a WhatsApp address (the message is still handled, only no later answer goes)."""
    user, bot = whatsapp_address(form.get("From") or ""), whatsapp_address(form.get("To") or "")
    return WhatsAppAddresses(user=user, bot=bot) if user and bot else None


def _content_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()
