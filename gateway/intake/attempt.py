"""One attempt at a spooled message, the same whether the webhook or the background worker makes it.

The attempt runs under the entry's lease. Each media item goes through MediaProcessor (idempotent per
(MessageSid, index): an item stored by an earlier attempt is found, not stored again). Items with a final
outcome are recorded in the entry; if any item must be retried, the entry stays with the time its next
attempt is due (exponential backoff with jitter), or moves to failed/ once it is older than
SPOOL_GIVE_UP_AFTER_S; if none must, the entry is deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway import metrics, replies
from gateway.budget import Budget
from gateway.intake.channels import message_of
from gateway.intake.spool import Backoff, Lease
from gateway.message import InvalidWebhook
from gateway.processing import ItemResult, MediaProcessor
from gateway.sender import InvalidSender

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    # Per media index, the result of this attempt (items already final from earlier attempts are absent
    # when the caller asked to skip them).
    results: dict[int, ItemResult]
    # True when the entry is still spooled: the retryable items will be tried again.
    will_retry: bool
    gave_up: bool = False

    def reply_for(self, index: int, content_type: str) -> str:
        """What the user is told about one item: its result, or "received, will be done shortly"."""
        result = self.results[index]
        if result.retryable and self.will_retry:
            return replies.received(content_type)
        return result.reply


class Attempts:
    """Makes attempts at spooled messages: the processing, and the retry policy (backoff, give up)."""

    def __init__(self, processor: MediaProcessor, backoff: Backoff, give_up_after_s: float) -> None:
        self._processor = processor
        self._backoff = backoff
        self._give_up_after_s = give_up_after_s

    def attempt(self, lease: Lease, budget: Budget, *, skip_finals: bool) -> Attempt:
        """Process the entry's items once and leave the entry done, rescheduled or given up; always
        releases the lease. ``skip_finals`` (the worker) skips items an earlier attempt finished; the
        webhook redoes them (cheap, idempotent) so its reply can say what became of each."""
        entry = lease.entry
        try:
            try:
                message = message_of(entry)
            except (InvalidWebhook, InvalidSender) as error:
                # It was valid when it was spooled: only a damaged entry or a changed parser (of an entry
                # in the format before) can get here. Nothing to retry.
                logger.error("spooled webhook no longer parses; dropped",
                             extra={"message_sid": entry.message_sid, "error": str(error)})
                lease.complete()
                return Attempt({}, will_retry=False)
            results: dict[int, ItemResult] = {}
            for item in message.media:
                if skip_finals and item.index in entry.finals:
                    continue
                results[item.index] = self._processor.process(message, item, budget, entry.received_at)
            pending = {i: r.outcome for i, r in results.items() if r.retryable}
            if not pending:
                lease.complete()
                metrics.record_attempt(message.media, results, will_retry=False)
                return Attempt(results, will_retry=False)
            for index, result in results.items():
                if not result.retryable and entry.finals.get(index) != result.outcome:
                    lease.record_final(index, result.outcome)
            age_s = time.time() - entry.received_at.timestamp()
            if age_s >= self._give_up_after_s:
                where = lease.give_up()
                logger.error("gave up on a spooled message",
                             extra={"message_sid": entry.message_sid, "attempts": entry.attempts + 1,
                                    "outcomes": pending, "moved_to": where.name})
                metrics.record_attempt(message.media, results, will_retry=False)
                return Attempt(results, will_retry=False, gave_up=True)
            delay_s = self._backoff.delay(entry.attempts + 1)
            lease.record_retry(pending, delay_s)
            logger.info("spooled message will be retried",
                        extra={"message_sid": entry.message_sid, "attempt": entry.attempts,
                               "outcomes": pending, "retry_in_s": round(delay_s, 2)})
            metrics.record_attempt(message.media, results, will_retry=True)
            return Attempt(results, will_retry=True)
        finally:
            lease.release()
