"""SpoolIntake: the ``Intake`` (gateway.intake) on the on-disk spool, what the gateway has always done.

``accept`` spools the message (fsync'd) before anything else, then tries it once within the webhook's
budget under the entry's lease. What a dependency being down or slow left undone stays spooled, the user
is told it will be done shortly, and the spool worker (gateway.intake.worker) finishes it. Twilio never
resends a webhook it got an answer for, and Telegram stops once it has its 200: the spool is what makes
"answered" safe.
"""

from __future__ import annotations

import logging
from datetime import datetime

from gateway import replies
from gateway.budget import Budget
from gateway.intake import ItemAnswer
from gateway.intake.attempt import Attempts
from gateway.intake.channels import message_of
from gateway.intake.spool import Backoff, Lease, Spool
from gateway.message import InboundMessage, InvalidWebhook
from gateway.processing import MediaProcessor
from gateway.sender import InvalidSender

logger = logging.getLogger(__name__)

# Left of the budget for writing the reply when waiting for another delivery's lease.
_REPLY_MARGIN_S = 1.0


class SpoolIntake:
    def __init__(self, spool: Spool, attempts: Attempts, processor: MediaProcessor) -> None:
        self.spool = spool
        self.attempts = attempts
        self._processor = processor

    @classmethod
    def open(cls, settings, processor: MediaProcessor) -> SpoolIntake:  # noqa: ANN001 (gateway.config.Settings)
        """The spool at SPOOL_DIR and the attempts with its retry settings; an OSError if SPOOL_DIR cannot be
        made, so start-up stops rather than the first webhook."""
        backoff = Backoff(settings.spool_retry_base_s, settings.spool_retry_max_s)
        attempts = Attempts(processor, backoff, settings.spool_give_up_after_s, max_attempts=settings.intake_max_attempts)
        return cls(Spool(settings.spool_dir), attempts, processor)

    def accept(self, message: InboundMessage, budget: Budget, received_at: datetime) -> list[ItemAnswer]:
        try:
            lease = self._lease_for(message, budget, received_at)
        except OSError as error:
            # The spool's disk is full or gone: still try now, as the gateway did before it had a spool; what
            # fails gets the old "please send it again".
            logger.error("could not spool the webhook; processing without a retry net",
                         extra={"message_sid": message.message_sid, "error": str(error)})
            results = [self._processor.process(message, item, budget, received_at) for item in message.media]
            return [ItemAnswer(r.reply, r.outcome) for r in results]
        if lease is None:
            # Another delivery of this message holds it (Twilio or a proxy resending while we work): it is
            # spooled, so it will be finished either by that delivery or by the worker.
            return [ItemAnswer(replies.received(item.content_type), None) for item in message.media]
        attempt = self.attempts.attempt(lease, budget, skip_finals=False)
        return [ItemAnswer.of(attempt.results[item.index], item.content_type, will_retry=attempt.will_retry)
                for item in message.media]

    def ready(self) -> bool:
        return self.spool.writable()

    def depth(self) -> int:
        return self.spool.depth()

    def oldest_age_s(self) -> float:
        return self.spool.oldest_age_s()

    def forget_sender(self, sender_id: str) -> int:
        return forget_sender(self.spool, sender_id)

    def _lease_for(self, message: InboundMessage, budget: Budget, received_at: datetime) -> Lease | None:
        """A new entry's lease or, for a repeated message id, the existing entry's once its holder is done;
        None if another holder keeps it past the budget."""
        for _ in range(3):
            lease = self.spool.add(message, received_at)
            if lease is not None:
                return lease
            lease = self.spool.lease(message.message_sid, wait_s=max(0.0, budget.remaining() - _REPLY_MARGIN_S))
            if lease is not None:
                return lease
            if budget.remaining() <= _REPLY_MARGIN_S:
                return None
            # The entry was finished (deleted) while we waited: spool this delivery afresh; processing it
            # again finds the stored objects, so its reply says "saved" without storing anything twice.
        return None


class SpoolEraser:
    """Erasure on a spool that this process does not otherwise work on (the `python -m gateway.media`
    command): the ``Forgets`` privacy needs, without the processing an Intake has."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def forget_sender(self, sender_id: str) -> int:
        return forget_sender(self.spool, sender_id)


def forget_sender(spool: Spool, sender_id: str) -> int:
    """Delete every entry of ``sender_id``'s, owed or given up (an erasure: gateway.privacy)."""

    def of_sender(entry) -> bool:  # noqa: ANN001 (gateway.intake.spool.Entry)
        try:
            return message_of(entry).sender_id == sender_id
        except (InvalidSender, InvalidWebhook):
            return False

    return spool.remove(of_sender)
