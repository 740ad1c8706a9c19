"""Deferred answers on Telegram (gateway.deferred): a sendMessage in reply to the user's message.

The webhook answered "Got your voice message: I'll save it shortly." because a dependency was down; when a
later attempt finishes (saved, no face, or given up), the user hears how it ended.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway import replies
from gateway.budget import Budget
from gateway.intake import ItemAnswer
from gateway.message import TELEGRAM, InboundMessage
from gateway.telegram.botapi import BotApi, BotApiError

logger = logging.getLogger(__name__)

# A sendMessage is small; it gets its own short budget, not what is left of the attempt's.
_SEND_BUDGET_S = 10.0


class TelegramReplies:
    def __init__(self, bot: BotApi) -> None:
        self._bot = bot

    def tell(self, message: InboundMessage, answers: Sequence[ItemAnswer]) -> bool:
        """Send the answers in reply to the user's message; False when there is nothing to send (another
        channel, no chat) or it could not be sent (logged)."""
        if message.channel != TELEGRAM or message.conversation is None or not answers:
            return False
        try:
            self._bot.send_message(message.conversation.chat_id, replies.combine([a.sentence for a in answers]),
                                   Budget(_SEND_BUDGET_S), reply_to=message.conversation.message_id)
        except BotApiError as error:  # the outcome is stored either way; only the message is lost
            logger.warning("could not tell the Telegram user the outcome",
                           extra={"message_sid": message.message_sid, "error": self._bot.redact(str(error))})
            return False
        logger.info("told the Telegram user the outcome", extra={"message_sid": message.message_sid})
        return True
