"""POST /whatsapp: the Twilio webhook. Signed requests in, one TwiML reply out, always.

Whatever happens inside (bad fields, a dead service, a full disk, a bug), Twilio gets a 200 with TwiML
the user can read, never a 500 with a stack trace; only an unsigned request gets something else (403).

The form is parsed once, here, into the channel-neutral message (gateway.message). A message with media
goes to the app's intake (gateway.intake: the spool, on disk and fsync'd, then one attempt within the
webhook's budget); what a dependency being down or slow left undone is finished later by the spool worker.
Twilio never resends a webhook it got an answer for: the intake is what makes "answered" safe.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from gateway import metrics, replies
from gateway.budget import Budget
from gateway.config import WEBHOOK_PATH
from gateway.message import InvalidWebhook
from gateway.privacy import parse_command
from gateway.sender import InvalidSender, mask_phone
from gateway.services import Services
from gateway.whatsapp.form import parse_webhook
from gateway.whatsapp.signature import twilio_signature_required
from gateway.whatsapp.twiml import twiml_response

logger = logging.getLogger(__name__)

bp = Blueprint("webhook", __name__)


# strict_slashes off: a webhook configured in the Twilio console as .../whatsapp/ reaches the view (and is
# checked against that exact URL) instead of getting a 404 or a redirect Twilio would not follow with a POST.
@bp.post(WEBHOOK_PATH, strict_slashes=False)
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

    privacy = services.privacy
    command = parse_command(message.body) if not message.media else None
    if command is not None:
        text = privacy.reply(command, message.sender_id, message.message_sid)
        return _answer(text, f"privacy_{command.value}", started, message_sid=message.message_sid,
                       sender=mask_phone(message.sender_id))
    # Asked before the media is stored: "nothing of theirs is kept yet" is about the time they wrote.
    notice = privacy.notice_if_first(message.sender_id, message.message_sid)

    if not message.media:
        return _answer(replies.HELP, "text_only", started, notice=notice, message_sid=message.message_sid,
                       sender=mask_phone(message.sender_id), message_type=message.message_type)

    metrics.record_media_received(message.media)
    answers = services.intake.accept(message, budget, received_at)
    return _answer(
        replies.combine([answer.sentence for answer in answers]),
        ",".join(answer.log_word for answer in answers),
        started,
        notice=notice,
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


def _answer(text: str, outcome: str, started: float, *, notice: str | None = None, **fields: object) -> Response:
    """The TwiML reply (and the privacy notice as a second message, on first contact), logged and counted."""
    metrics.record_webhook_answer(outcome, started)
    logger.info(
        "webhook handled",
        extra={**fields, "outcome": outcome, "notice": notice is not None,
               "elapsed_ms": round((time.monotonic() - started) * 1000, 1)},
    )
    return twiml_response(text, *([notice] if notice else []))
