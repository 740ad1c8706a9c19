"""A deferred outcome, told to the Telegram user once the spool worker knows it.

The webhook answered "Got your voice message: I'll save it shortly." because a dependency was down; when a
later attempt finishes (saved, no face, or given up), the user hears how it ended, with a sendMessage in
reply to their message. WhatsApp has no such call without Twilio's REST API, so there the worker says nothing.
"""

from __future__ import annotations

import logging

from gateway import replies
from gateway.budget import Budget
from gateway.intake.attempt import Attempt
from gateway.intake.channels import message_of
from gateway.intake.spool import Entry
from gateway.message import TELEGRAM, InvalidWebhook
from gateway.sender import InvalidSender
from gateway.telegram.botapi import BotApi, BotApiError

logger = logging.getLogger(__name__)

# A sendMessage is small; it gets its own short budget, not what is left of the attempt's.
_SEND_BUDGET_S = 10.0


class TelegramNotifier:
    def __init__(self, bot: BotApi) -> None:
        self._bot = bot

    def __call__(self, entry: Entry, attempt: Attempt) -> bool:
        """Send the outcome of a finished attempt at a Telegram entry; False when there is nothing to send
        (another channel, still to be retried, nothing tried) or it could not be sent (logged)."""
        if attempt.will_retry or not attempt.results:
            return False
        try:
            message = message_of(entry)
        except (InvalidWebhook, InvalidSender):
            return False
        if message.channel != TELEGRAM or message.conversation is None:
            return False
        sentences = [attempt.reply_for(item.index, item.content_type) for item in message.media
                     if item.index in attempt.results]
        try:
            self._bot.send_message(message.conversation.chat_id, replies.combine(sentences),
                                   Budget(_SEND_BUDGET_S), reply_to=message.conversation.message_id)
        except BotApiError as error:  # the outcome is stored either way; only the message is lost
            logger.warning("could not tell the Telegram user the outcome",
                           extra={"message_sid": entry.message_sid, "error": self._bot.redact(str(error))})
            return False
        logger.info("told the Telegram user the outcome", extra={"message_sid": entry.message_sid})
        return True
