"""POST /whatsapp: the Twilio webhook. Signed requests in, one TwiML reply out, always.

Whatever happens inside (bad fields, a dead service, a full disk, a bug), Twilio gets a 200 with TwiML
the user can read, never a 500 with a stack trace; only an unsigned request gets something else (403).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from gateway import replies
from gateway.budget import Budget
from gateway.config import WEBHOOK_PATH
from gateway.inbound import InvalidWebhook, parse_webhook
from gateway.sender import InvalidSender, mask_phone
from gateway.services import Services
from gateway.signature import twilio_signature_required

logger = logging.getLogger(__name__)

bp = Blueprint("webhook", __name__)


def twiml_response(text: str) -> Response:
    return Response(replies.twiml(text), status=200, mimetype="text/xml")


@bp.post(WEBHOOK_PATH)
@twilio_signature_required
def whatsapp() -> Response:
    started = time.monotonic()
    received_at = datetime.now(UTC)
    services: Services = current_app.extensions["mediabot"]
    budget = Budget(services.settings.webhook_budget_s)
    claimed_sid = (request.form.get("MessageSid") or "")[:40]

    try:
        message = parse_webhook(request.form)
    except InvalidSender as error:
        return _answer(replies.INVALID_SENDER, "invalid_sender", started, message_sid=claimed_sid, detail=str(error))
    except InvalidWebhook as error:
        return _answer(replies.INVALID_MESSAGE, "invalid_message", started, message_sid=claimed_sid, detail=str(error))

    if not message.media:
        return _answer(replies.HELP, "text_only", started, message_sid=message.message_sid,
                       sender=mask_phone(message.sender_id), message_type=message.message_type)

    results = [services.processor.process(message, item, budget, received_at) for item in message.media]
    return _answer(
        replies.combine([result.reply for result in results]),
        ",".join(result.outcome for result in results),
        started,
        message_sid=message.message_sid,
        sender=mask_phone(message.sender_id),
        message_type=message.message_type,
        num_media=len(message.media),
    )


@bp.errorhandler(Exception)
def unexpected_error(error: Exception) -> Response | HTTPException:
    """Anything that escaped the view still becomes a readable TwiML reply (HTTP errors pass through)."""
    if isinstance(error, HTTPException):
        return error
    logger.exception("webhook failed unexpectedly", extra={"message_sid": (request.form.get("MessageSid") or "")[:40]})
    return twiml_response(replies.INTERNAL_ERROR)


def _answer(text: str, outcome: str, started: float, **fields: object) -> Response:
    logger.info(
        "webhook handled",
        extra={**fields, "outcome": outcome, "elapsed_ms": round((time.monotonic() - started) * 1000, 1)},
    )
    return twiml_response(text)
