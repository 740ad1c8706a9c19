"""JetStreamIntake: the ``Intake`` (gateway.intake) on NATS JetStream (``INTAKE=jetstream``), for clusters.

The queue's mechanics (stream, consumer, dead letters, the outcome hand-off) are gateway.intake.jetstream's
``JetStreamQueue``; this module is what the webhooks see, with the same promises as the spool:

- ``accept`` subscribes to the message's outcome subject, publishes the parsed message with
  ``Nats-Msg-Id`` = its MessageSid (the server drops a replayed webhook) and waits for a worker
  (gateway.intake.jetstream_worker) to hand over the outcome, within the webhook's budget less a margin
  for the reply. The user hears the outcome's sentences, or "received, I'll do it shortly" (deferred): the
  worker then tells them itself once the message is done.
- A replayed webhook (the server already had its id) is processed here and now: every store is
  idempotent per (MessageSid, index), so it finds what the first delivery stored, and what is still
  failing is answered "shortly", since the first delivery is still queued for the workers.
- NATS down: queueing is tried again for half the budget (a restarting server is back within seconds);
  then the message is processed now without a retry net, as the spool does when its disk fails, so the
  user still gets an answer (and what fails is "please send it again").

Subjects carry an HMAC of the sender id (``sender_key``), never the number; its key is NATS_SUBJECT_KEY or,
unset, derived from TWILIO_AUTH_TOKEN, which every gateway and worker already has.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime

from gateway import replies
from gateway.budget import Budget
from gateway.intake import ItemAnswer
from gateway.intake.jetstream import IntakeUnavailable, JetStreamQueue, JetStreamSettings, sender_key
from gateway.message import InboundMessage, InvalidWebhook, from_json, to_json
from gateway.outcome import Outcome
from gateway.processing import MediaProcessor

logger = logging.getLogger(__name__)

# Left of the webhook's budget for writing the reply after the wait for a worker's outcome.
REPLY_MARGIN_S = 1.0
# Between tries at queueing while NATS is unreachable.
_RETRY_PAUSE_S = 0.25
# The durable consumer every worker shares (k8s/components/keda-worker's scaler reads its lag).
CONSUMER = "worker"
# Labels the derivation of the subject key from TWILIO_AUTH_TOKEN, so the key is not the token itself.
_SUBJECT_KEY_LABEL = b"mediabot nats subject key v1"


def subject_key_secret(settings) -> str:  # noqa: ANN001 (gateway.config.Settings)
    """NATS_SUBJECT_KEY, or an HMAC of a fixed label under TWILIO_AUTH_TOKEN (hex) when it is unset."""
    if settings.nats_subject_key:
        return str(settings.nats_subject_key)
    return hmac.new(settings.twilio_auth_token.encode(), _SUBJECT_KEY_LABEL, hashlib.sha256).hexdigest()


def jetstream_settings(settings) -> JetStreamSettings:  # noqa: ANN001 (gateway.config.Settings)
    """The queue's settings from the gateway's: the stream NATS_STREAM (dead letters beside it), the poison
    cap INTAKE_MAX_ATTEMPTS as MaxDeliver, and no server-side backoff list: a failed attempt is naked with
    the spool's own backoff (SPOOL_RETRY_BASE_S/MAX_S, with jitter), and a delivery whose worker died comes
    back after NATS_ACK_WAIT_S."""
    stream = settings.nats_stream
    return JetStreamSettings(
        url=settings.nats_url,
        stream=stream,
        dead_letter_stream=f"{stream}_DEAD_LETTERS",
        subject_prefix=stream.lower(),
        consumer=CONSUMER,
        replicas=settings.nats_replicas,
        duplicate_window_s=settings.nats_duplicate_window_s,
        ack_wait_s=settings.nats_ack_wait_s,
        backoff_s=(),
        max_deliver=settings.intake_max_attempts,
        sender_key_secret=subject_key_secret(settings),
    )


# -- what travels -----------------------------------------------------------------------------------------


def encode_message(message: InboundMessage, received_at: datetime) -> bytes:
    """The queued payload: the parsed message (gateway.message.to_json) and when the webhook got it."""
    return json.dumps({"message": to_json(message), "received_at": received_at.isoformat()}).encode()


def decode_message(payload: bytes) -> tuple[InboundMessage, datetime]:
    """What ``encode_message`` wrote; InvalidWebhook (or InvalidSender) for anything else."""
    try:
        fields = json.loads(payload)
        received_at = datetime.fromisoformat(fields["received_at"])
        raw = fields["message"]
    except (ValueError, TypeError, KeyError) as error:
        raise InvalidWebhook(f"not a queued message ({type(error).__name__}: {error})") from None
    return from_json(raw), received_at


def encode_answers(answers: Sequence[ItemAnswer]) -> bytes:
    """An attempt's answers, as the worker offers them to the waiting webhook."""
    return json.dumps([{"sentence": a.sentence, "outcome": None if a.outcome is None else str(a.outcome),
                        "deferred": a.deferred} for a in answers]).encode()


def decode_answers(payload: bytes) -> list[ItemAnswer]:
    items = json.loads(payload)
    return [ItemAnswer(str(item["sentence"]), None if item["outcome"] is None else Outcome(item["outcome"]),
                       deferred=bool(item["deferred"])) for item in items]


def deferred_answers(message: InboundMessage) -> list[ItemAnswer]:
    """ "Got it, I'll do it shortly" for every item: queued, no outcome known yet."""
    return [ItemAnswer(replies.received(item.content_type), None, deferred=True) for item in message.media]


# -- the intake -------------------------------------------------------------------------------------------


class JetStreamIntake:
    """The ``Intake`` on a ``JetStreamQueue``. Made once per app; connects on first use, after the fork."""

    def __init__(self, queue: JetStreamQueue, processor: MediaProcessor) -> None:
        self.queue = queue
        self._processor = processor

    @classmethod
    def open(cls, settings, processor: MediaProcessor) -> JetStreamIntake:  # noqa: ANN001 (gateway.config.Settings)
        """Nothing is connected here: gunicorn forks after the app's Services are built, and the worker must
        start while NATS is down."""
        return cls(JetStreamQueue(jetstream_settings(settings)), processor)

    def sender_key(self, sender_id: str) -> str:
        return sender_key(sender_id, self.queue.settings.sender_key_secret)

    def accept(self, message: InboundMessage, budget: Budget, received_at: datetime) -> list[ItemAnswer]:
        extra = {"message_sid": message.message_sid}
        payload = encode_message(message, received_at)
        key = self.sender_key(message.sender_id)
        # A NATS server restarting (a pod rescheduled, a kill -9) is back within seconds: keep trying to queue
        # for half the budget, and keep the other half for processing now if it stays away.
        stop_retrying_at = budget.remaining() / 2
        unconfirmed = False  # a publish raised: it may still have reached the server (JetStreamQueue.publish)
        while True:
            publishing = False
            try:
                # Subscribed before the publish, so a quick worker's offer cannot come before anyone listens.
                with self.queue.wait_outcome(message.message_sid) as waiter:
                    publish_s = min(self.queue.settings.publish_timeout_s,
                                    max(0.5, budget.remaining() - stop_retrying_at))
                    publishing = True
                    new = self.queue.publish(message.message_sid, payload, key, timeout_s=publish_s)
                    if not new and not unconfirmed:
                        break  # a replay: answered below, from the store
                    # New, or "duplicate" of our own earlier publish that did land: wait for its outcome.
                    return self._answers_from(message, waiter.wait(budget.remaining() - REPLY_MARGIN_S))
            except IntakeUnavailable as error:
                unconfirmed = unconfirmed or publishing
                if budget.remaining() - _RETRY_PAUSE_S > stop_retrying_at:
                    time.sleep(_RETRY_PAUSE_S)
                    continue
                # NATS is down: still try now, as the spool does when its disk fails; what fails gets "please
                # send it again". (If a publish did land after all, a worker does it again later and finds
                # what was stored here.)
                logger.error("could not queue the webhook; processing without a retry net",
                             extra={**extra, "error": str(error)})
                results = [self._processor.process(message, item, budget, received_at) for item in message.media]
                return [ItemAnswer(r.reply, r.outcome) for r in results]
        return self._replayed(message, budget, received_at)

    def _answers_from(self, message: InboundMessage, outcome: bytes | None) -> list[ItemAnswer]:
        """The worker's answers the webhook took, or "shortly" for every item when none came in time."""
        extra = {"message_sid": message.message_sid}
        if outcome is None:
            logger.info("queued; the worker will tell the outcome", extra=extra)
            return deferred_answers(message)
        try:
            answers = decode_answers(outcome)
        except (ValueError, TypeError, KeyError) as error:  # a worker of another version: it is done anyway
            logger.error("unreadable outcome from a worker", extra={**extra, "error": str(error)})
            return deferred_answers(message)
        if len(answers) != len(message.media):
            logger.error("outcome does not match the message", extra={**extra, "items": len(answers)})
            return deferred_answers(message)
        return answers

    def _replayed(self, message: InboundMessage, budget: Budget, received_at: datetime) -> list[ItemAnswer]:
        """A webhook the stream already holds (or held: done within the duplicate window). Processed now for
        its reply; the stores are idempotent, so nothing is stored twice."""
        logger.info("replayed webhook: already queued, answering from the store",
                    extra={"message_sid": message.message_sid})
        return [ItemAnswer.of(self._processor.process(message, item, budget, received_at), item.content_type,
                              will_retry=True) for item in message.media]

    def ready(self) -> bool:
        return self.queue.ready()

    def depth(self) -> int:
        """Messages queued or being worked on; 0 while NATS cannot be asked (``ready`` says so)."""
        try:
            return self.queue.depth()
        except IntakeUnavailable as error:
            logger.warning("intake depth unknown: NATS unreachable", extra={"error": str(error)})
            return 0

    def oldest_age_s(self) -> float:
        try:
            return self.queue.oldest_age_s()
        except IntakeUnavailable as error:
            logger.warning("intake age unknown: NATS unreachable", extra={"error": str(error)})
            return 0.0

    def forget_sender(self, sender_id: str) -> int:
        """Purge the sender's queued messages and dead letters; a ConnectionError (an OSError, which the
        privacy commands answer "try again later") while NATS is unreachable."""
        return JetStreamEraser(self.queue).forget_sender(sender_id)

    def close(self) -> None:
        self.queue.close()


class JetStreamEraser:
    """Erasure on the stream from a process that does not otherwise use it (`python -m gateway.media`)."""

    def __init__(self, queue: JetStreamQueue) -> None:
        self.queue = queue

    def forget_sender(self, sender_id: str) -> int:
        try:
            return self.queue.purge_sender(sender_key(sender_id, self.queue.settings.sender_key_secret))
        except IntakeUnavailable as error:  # an OSError, which the privacy commands answer "try again later"
            raise ConnectionError(f"NATS unreachable: {error}") from error


__all__ = ["JetStreamEraser", "JetStreamIntake", "decode_answers", "decode_message", "deferred_answers",
           "encode_answers", "encode_message", "jetstream_settings", "subject_key_secret"]
