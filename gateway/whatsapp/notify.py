"""Deferred answers on WhatsApp (gateway.deferred), through Twilio's REST API.

The webhook's TwiML is the answer to a message; an outcome known only later (the worker stored a voice note
once the audio service was back) goes out as a new message: ``POST /2010-04-01/Accounts/{sid}/Messages.json``
with From = the address the user wrote to (the webhook's To, e.g. the sandbox's "whatsapp:+14155238886") and
To = the user's address (the webhook's From). WhatsApp lets a business answer freely within 24 hours of the
user's last message; a deferred answer comes well within that (SPOOL_GIVE_UP_AFTER_S is a day at most).

The twilio library's Client is used as documented; the only setting changed is ``client.api.base_url``, the
public attribute the library's ``Domain`` builds every URL of the Api domain from, so TWILIO_API_BASE_URL
can point it at a local stand-in (the tests') instead of https://api.twilio.com.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from requests import RequestException
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from gateway import replies
from gateway.intake import ItemAnswer
from gateway.message import WHATSAPP, InboundMessage

logger = logging.getLogger(__name__)

# The library logs each request's URL and headers at INFO (never the body or the Authorization header);
# kept out of the JSON logs unless something goes wrong.
_HTTP_LOGGER = logging.getLogger(f"{__name__}.http")
_HTTP_LOGGER.setLevel(logging.WARNING)


def _text(message: InboundMessage, answers: Sequence[ItemAnswer]) -> str | None:
    """The one message to send, or None (logged) when this message cannot get a WhatsApp answer."""
    if message.channel != WHATSAPP or not answers:
        return None
    if message.whatsapp is None:
        # Spooled before the addresses were kept, or From/To were not WhatsApp addresses.
        logger.warning("no WhatsApp address to tell the user the outcome",
                       extra={"message_sid": message.message_sid})
        return None
    return replies.combine([answer.sentence for answer in answers])


class TwilioWhatsAppReplies:
    def __init__(self, account_sid: str, auth_token: str, *, base_url: str, timeout_s: float) -> None:
        self._client = Client(account_sid, auth_token,
                              http_client=TwilioHttpClient(timeout=timeout_s, logger=_HTTP_LOGGER))
        self._client.api.base_url = base_url

    def tell(self, message: InboundMessage, answers: Sequence[ItemAnswer]) -> bool:
        text = _text(message, answers)
        if text is None or message.whatsapp is None:
            return False
        try:
            sent = self._client.messages.create(from_=message.whatsapp.bot, to=message.whatsapp.user, body=text)
        except TwilioException as error:
            # TwilioRestException carries Twilio's status and error code; neither names the user or the token.
            logger.warning("could not tell the WhatsApp user the outcome",
                           extra={"message_sid": message.message_sid, "error": _describe(error)})
            return False
        except RequestException as error:
            logger.warning("could not reach Twilio to tell the WhatsApp user the outcome",
                           extra={"message_sid": message.message_sid, "error": type(error).__name__})
            return False
        logger.info("told the WhatsApp user the outcome",
                    extra={"message_sid": message.message_sid, "twilio_message_sid": sent.sid})
        return True


class LoggedWhatsAppReplies:
    """Development mode (the public development credentials, no TWILIO_API_BASE_URL): there is no Twilio
    account to send from, so the answer that would be sent is logged instead."""

    def tell(self, message: InboundMessage, answers: Sequence[ItemAnswer]) -> bool:
        text = _text(message, answers)
        if text is None:
            return False
        logger.info("development mode: the WhatsApp user would be told %r (set TWILIO_API_BASE_URL to send it)",
                    text, extra={"message_sid": message.message_sid})
        return False


def _describe(error: TwilioException) -> str:
    status, code = getattr(error, "status", None), getattr(error, "code", None)
    if status is not None:
        return f"Twilio answered {status}" + (f" (error {code})" if code else "")
    return type(error).__name__
