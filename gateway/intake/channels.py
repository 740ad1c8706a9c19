"""A spooled entry read back into the InboundMessage it holds, in today's format or the one before it.

Everything after intake (processing, storage, the spool, privacy, metrics) is shared; what differs per channel
is only how a webhook is verified and parsed (gateway.whatsapp, gateway.telegram) and how the reply goes
back. Today the webhook's parsed message is spooled (gateway.message.to_json) and read back as it was. An
entry written by the version before holds the channel's raw fields instead; this is the one place that
still parses those, so an upgrade with entries on disk loses nothing.
"""

from __future__ import annotations

from gateway.intake.spool import Entry
from gateway.message import TELEGRAM, WHATSAPP, InboundMessage, InvalidWebhook, from_json


def message_of(entry: Entry) -> InboundMessage:
    """The message a spool entry holds; InvalidWebhook (or InvalidSender) if it cannot be read back."""
    if entry.message is not None:
        return from_json(entry.message)
    return _legacy(entry)


def _legacy(entry: Entry) -> InboundMessage:
    """An entry of the format before: line 1 is ``form`` (+ ``channel`` for Telegram), parsed as the
    webhook parsed it then. Imported here only: no current entry needs either channel's parser."""
    form = entry.form or {}
    if entry.channel == WHATSAPP:
        from gateway.whatsapp.form import parse_webhook

        return parse_webhook(form)
    if entry.channel == TELEGRAM:
        from gateway.telegram.updates import inbound_from_form

        return inbound_from_form(form)
    raise InvalidWebhook(f"spooled by an unknown channel {entry.channel!r}")
