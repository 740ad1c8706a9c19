"""The channels a message can arrive by, and how a spooled entry of each is read back.

Everything after intake (processing, stores, spool, privacy, metrics) is shared; what differs per channel is
only how a webhook is verified and parsed (gateway.whatsapp.webhook with gateway.inbound for WhatsApp,
gateway.telegram for Telegram) and how the reply goes back. A spool entry records its channel, and this is
the one place that turns it back into an InboundMessage, for the retrying worker and for erasures.
"""

from __future__ import annotations

from gateway.message import InboundMessage, InvalidWebhook
from gateway.whatsapp.form import parse_webhook
from gateway.intake.spool import Entry

WHATSAPP = "whatsapp"
TELEGRAM = "telegram"


def parse_spooled(entry: Entry) -> InboundMessage:
    """The message a spool entry holds; InvalidWebhook (or InvalidSender) if it no longer parses."""
    if entry.channel == WHATSAPP:
        return parse_webhook(entry.form)
    if entry.channel == TELEGRAM:
        from gateway.telegram.updates import inbound_from_form  # only where a Telegram entry is read

        return inbound_from_form(entry.form)
    raise InvalidWebhook(f"spooled by an unknown channel {entry.channel!r}")
