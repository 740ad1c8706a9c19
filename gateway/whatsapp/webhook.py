"""POST /whatsapp: the Twilio webhook. Signed requests in, one TwiML reply out, always.

Whatever happens inside (bad fields, a dead service, a full disk, a bug), Twilio gets a 200 with TwiML
the user can read, never a 500 with a stack trace; only an unsigned request gets something else (403).

A message with media is spooled (gateway.intake.spool: on disk, fsync'd) before anything else, then tried once
within the webhook's budget under the entry's lease. What a dependency being down or slow left undone
stays spooled, the user is told it will be done shortly, and the spool worker (gateway.intake.worker) finishes
it. Twilio never resends a webhook it got an answer for: the spool is what makes "answered" safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from gateway import metrics, replies
from gateway.budget import Budget
from gateway.config import WEBHOOK_PATH
from gateway.message import InboundMessage, InvalidWebhook
from gateway.whatsapp.form import parse_webhook
from gateway.intake.attempt import Intake
from gateway.privacy import Privacy, parse_command
from gateway.sender import InvalidSender, mask_phone
from gateway.services import Services
from gateway.whatsapp.signature import twilio_signature_required
from gateway.whatsapp.twiml import twiml_response
from gateway.intake.spool import Backoff, Lease, Spool

logger = logging.getLogger(__name__)

bp = Blueprint("webhook", __name__)

# Left of the budget for writing the reply when waiting for another delivery's lease.
_REPLY_MARGIN_S = 1.0
_INTAKE = "mediabot.intake"
# The app's Privacy (gateway.privacy), shared with the Telegram channel.
PRIVACY = "mediabot.privacy"


@bp.record_once
def _open_spool(state) -> None:  # noqa: ANN001 (flask's BlueprintSetupState)
    """The spool and the attempt logic, made with the app (after its Services), so a SPOOL_DIR that
    cannot be created stops start-up instead of the first webhook."""
    services: Services = state.app.extensions["mediabot"]
    settings = services.settings
    state.app.extensions[_INTAKE] = (
        Spool(settings.spool_dir),
        Intake(services.processor, Backoff(settings.spool_retry_base_s, settings.spool_retry_max_s),
               settings.spool_give_up_after_s),
    )
    spool = state.app.extensions[_INTAKE][0]
    metrics.set_spool_probe(lambda: (spool.depth(), spool.oldest_age_s()))
    state.app.extensions[PRIVACY] = Privacy(
        services.store, spool, retention_days=settings.retention_days, notice=settings.privacy_notice,
        policy_url=settings.privacy_policy_url,
    )


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

    privacy: Privacy = current_app.extensions[PRIVACY]
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
    sentences, outcomes = spool_and_try(message, budget, received_at)
    return _answer(
        replies.combine(sentences),
        ",".join(outcomes),
        started,
        notice=notice,
        message_sid=message.message_sid,
        sender=mask_phone(message.sender_id),
        message_type=message.message_type,
        num_media=len(message.media),
    )


def spool_and_try(
    message: InboundMessage, budget: Budget, received_at: datetime, *, form: Mapping[str, str] | None = None,
    channel: str = "whatsapp",
) -> tuple[list[str], list[str]]:
    """Spool the message, try it once under its lease, and say per item what became of it. ``form`` is what
    is spooled (default: this request's Twilio form), ``channel`` how it is read back (gateway.intake.channels)."""
    services: Services = current_app.extensions["mediabot"]
    spool, intake = current_app.extensions[_INTAKE]
    try:
        lease = _lease_for(spool, message, budget, received_at, form, channel)
    except OSError as error:
        # The spool's disk is full or gone: still try now, as the gateway did before it had a spool; what
        # fails gets the old "please send it again".
        logger.error("could not spool the webhook; processing without a retry net",
                     extra={"message_sid": message.message_sid, "error": str(error)})
        results = [services.processor.process(message, item, budget, received_at) for item in message.media]
        return [r.reply for r in results], [r.outcome for r in results]
    if lease is None:
        # Another delivery of this message holds it (Twilio or a proxy resending while we work): it is
        # spooled, so it will be finished either by that delivery or by the worker.
        received = [replies.received(item.content_type) for item in message.media]
        return received, ["in_progress"] * len(message.media)
    attempt = intake.attempt(lease, budget, skip_finals=False)
    sentences = [attempt.reply_for(item.index, item.content_type) for item in message.media]
    outcomes = [
        ("spooled:" if attempt.will_retry and attempt.results[item.index].retryable else "")
        + attempt.results[item.index].outcome
        for item in message.media
    ]
    return sentences, outcomes


def _lease_for(
    spool: Spool, message: InboundMessage, budget: Budget, received_at: datetime,
    form: Mapping[str, str] | None = None, channel: str = "whatsapp",
) -> Lease | None:
    """A new entry's lease or, for a repeated MessageSid, the existing entry's once its holder is done;
    None if another holder keeps it past the budget."""
    form = request.form.to_dict(flat=True) if form is None else dict(form)
    for _ in range(3):
        lease = spool.add(message.message_sid, form, received_at, channel=channel)
        if lease is not None:
            return lease
        lease = spool.lease(message.message_sid, wait_s=max(0.0, budget.remaining() - _REPLY_MARGIN_S))
        if lease is not None:
            return lease
        if budget.remaining() <= _REPLY_MARGIN_S:
            return None
        # The entry was finished (deleted) while we waited: spool this delivery afresh; processing it
        # again finds the stored objects, so its reply says "saved" without storing anything twice.
    return None


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
