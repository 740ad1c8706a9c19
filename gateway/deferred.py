"""Deferred answers: telling a user how an item ended when that is known only after the webhook answered.

The webhook answers every message at once; an item it could not finish then ("Got your voice message: I'll
save it shortly.") is finished later by a worker, and the user hears how it ended in a second message, sent
by the channel's own API: Twilio's REST API for WhatsApp (gateway.whatsapp.notify), the Bot API's
sendMessage for Telegram (gateway.telegram.notify). Both intakes' workers use this one interface, built
once per process by gateway.services (``services.deferred``):

    services.deferred.tell(message, answers) -> bool

``answers`` are the finished items' sentences (gateway.intake.ItemAnswer), in the message's order; they are
sent as one message. Sending is best effort: a failure is logged (without the user's number or any
credential) and returns False, and never keeps the intake from finishing the message: the media are stored
either way. Saying it at most once is the caller's job (the spool records "told" in the entry).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.intake import ItemAnswer
from gateway.message import TELEGRAM, WHATSAPP, InboundMessage

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.telegram.botapi import BotApi

__all__ = ["ChannelReplies", "DeferredReplies", "make_deferred_replies"]

logger = logging.getLogger(__name__)


class DeferredReplies(Protocol):
    def tell(self, message: InboundMessage, answers: Sequence[ItemAnswer]) -> bool:
        """Send ``answers`` to the user who sent ``message``, as one message on its channel; True when it was
        sent, False when it could not be (logged) or there is nothing to send. Never raises."""
        ...


class ChannelReplies:
    """The ``DeferredReplies`` of a process: each message goes to its own channel's sender."""

    def __init__(self, senders: Mapping[str, DeferredReplies]) -> None:
        self._senders = dict(senders)

    def tell(self, message: InboundMessage, answers: Sequence[ItemAnswer]) -> bool:
        if not answers:
            return False
        sender = self._senders.get(message.channel)
        if sender is None:
            logger.warning("no way to tell the user the outcome on this channel",
                           extra={"message_sid": message.message_sid, "channel": message.channel})
            return False
        try:
            return sender.tell(message, answers)
        except Exception:  # noqa: BLE001 - a bug in a sender must not keep the intake from finishing
            logger.exception("telling the user the outcome failed", extra={"message_sid": message.message_sid})
            return False


def make_deferred_replies(settings: Settings, telegram: BotApi | None) -> ChannelReplies:
    """WhatsApp through Twilio's REST API (or, with the development credentials and no TWILIO_API_BASE_URL,
    a log line), and Telegram through the Bot API client when the Telegram channel is on."""
    from gateway.whatsapp.notify import LoggedWhatsAppReplies, TwilioWhatsAppReplies

    whatsapp: DeferredReplies
    if settings.twilio_api_base_url:
        whatsapp = TwilioWhatsAppReplies(settings.twilio_account_sid, settings.twilio_auth_token,
                                         base_url=settings.twilio_api_base_url,
                                         timeout_s=settings.download_read_timeout_s)
    else:
        whatsapp = LoggedWhatsAppReplies()
    senders: dict[str, DeferredReplies] = {WHATSAPP: whatsapp}
    if telegram is not None:
        from gateway.telegram.notify import TelegramReplies

        senders[TELEGRAM] = TelegramReplies(telegram)
    return ChannelReplies(senders)
