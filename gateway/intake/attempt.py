"""One attempt at a spooled message, the same whether the webhook or the background worker makes it.

The attempt runs under the entry's lease. Each media item goes through MediaProcessor (idempotent per
(MessageSid, index): an item stored by an earlier attempt is found, not stored again). Items with a final
outcome are recorded in the entry; if any item must be retried, the entry stays with the time its next
attempt is due (exponential backoff with jitter). It is given up on, and moves to failed/, once the message
has had INTAKE_MAX_ATTEMPTS attempts (the poison cap: an input that crashes a service is not retried all
day) or is older than SPOOL_GIVE_UP_AFTER_S: every item still failing then ends as ``Outcome.GAVE_UP``,
with its own final sentence. If nothing must be retried, the entry is deleted.

Deferred answers (gateway.deferred). A background attempt (the worker's: ``deferred`` given) that finishes
an entry tells the user how the items it finished ended, once, in one message. The order makes "once"
hold across a worker dying at any point, with one exception:
    1. each item's final outcome and sentence are recorded in the entry ("tell"), fsync'd;
    2. the answer is sent;
    3. "told" is recorded, fsync'd;
    4. the entry is deleted (or moved to failed/).
A worker dying before 2 leaves the sentences in the entry: the next pass sends them. One dying between 2
and 3 (the HTTP request done, the fsync of one line not yet) is the at-least-once window: the next pass
sends the answer again. After 3 nothing is sent again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.budget import Budget
from gateway.intake import ItemAnswer
from gateway.intake.channels import message_of
from gateway.intake.spool import Backoff, Lease
from gateway.message import InboundMessage, InvalidWebhook
from gateway.outcome import Outcome
from gateway.processing import ItemResult, MediaProcessor
from gateway.sender import InvalidSender

if TYPE_CHECKING:
    from gateway.deferred import DeferredReplies

logger = logging.getLogger(__name__)

# The poison cap's default (INTAKE_MAX_ATTEMPTS, gateway.config).
DEFAULT_MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Attempt:
    # Per media index, the result of this attempt (items already final from earlier attempts are absent
    # when the caller asked to skip them). Items given up on have Outcome.GAVE_UP here.
    results: dict[int, ItemResult]
    # True when the entry is still spooled: the retryable items will be tried again.
    will_retry: bool
    gave_up: bool = False
    # True when the user was sent a deferred answer by this attempt (gateway.deferred).
    told: bool = False


class Attempts:
    """Makes attempts at spooled messages: the processing, and the retry policy (backoff, poison cap, give up)."""

    def __init__(self, processor: MediaProcessor, backoff: Backoff, give_up_after_s: float,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._processor = processor
        self._backoff = backoff
        self._give_up_after_s = give_up_after_s
        self._max_attempts = max_attempts

    def attempt(self, lease: Lease, budget: Budget, *, skip_finals: bool,
                deferred: DeferredReplies | None = None) -> Attempt:
        """Process the entry's items once and leave the entry done, rescheduled or given up; always
        releases the lease. ``skip_finals`` (the worker) skips items an earlier attempt finished; the
        webhook redoes them (cheap, idempotent) so its reply can say what became of each. ``deferred`` (the
        worker): the user is told how the items finished in the background ended, when the entry finishes."""
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
                told = self._finish(lease, message, results, deferred)
                lease.complete()
                metrics.record_attempt(message.media, results, will_retry=False)
                return Attempt(results, will_retry=False, told=told)
            attempts = entry.attempts + 1  # this one included; the webhook's is the first
            age_s = time.time() - entry.received_at.timestamp()
            if attempts >= self._max_attempts or age_s >= self._give_up_after_s:
                given_up = {i: r.given_up(message.media[i].content_type) if r.retryable else r for i, r in results.items()}
                told = self._finish(lease, message, given_up, deferred, record_all=True)
                where = lease.give_up()
                logger.error("gave up on a spooled message",
                             extra={"message_sid": entry.message_sid, "attempts": attempts,
                                    "reason": "INTAKE_MAX_ATTEMPTS" if attempts >= self._max_attempts
                                    else "SPOOL_GIVE_UP_AFTER_S",
                                    "outcomes": pending, "moved_to": where.name})
                metrics.record_attempt(message.media, given_up, will_retry=False)
                return Attempt(given_up, will_retry=False, gave_up=True, told=told)
            for index, result in results.items():
                if not result.retryable and entry.finals.get(index) != result.outcome:
                    # Finished in the background: its sentence waits in the entry until the whole entry is.
                    lease.record_final(index, result.outcome, tell=result.reply if deferred is not None else None)
            delay_s = self._backoff.delay(entry.attempts + 1)
            lease.record_retry(pending, delay_s)
            logger.info("spooled message will be retried",
                        extra={"message_sid": entry.message_sid, "attempt": entry.attempts,
                               "outcomes": pending, "retry_in_s": round(delay_s, 2)})
            metrics.record_attempt(message.media, results, will_retry=True)
            return Attempt(results, will_retry=True)
        finally:
            lease.release()

    def _finish(self, lease: Lease, message: InboundMessage, results: dict[int, ItemResult],
                deferred: DeferredReplies | None, *, record_all: bool = False) -> bool:
        """Before the entry leaves the spool: record the final outcomes (all of them when ``record_all``,
        for the person reading failed/) and, in the background, tell the user (steps 1-3 of the module
        docstring). True when an answer was sent."""
        entry = lease.entry
        if deferred is None and not record_all:
            return False
        for index, result in results.items():
            if entry.finals.get(index) != result.outcome or (deferred is not None and index not in entry.to_tell):
                lease.record_final(index, result.outcome, tell=result.reply if deferred is not None else None)
        if deferred is None or not entry.to_tell:
            return False
        answers = [ItemAnswer(sentence, _outcome(word)) for _, (word, sentence) in sorted(entry.to_tell.items())]
        told = deferred.tell(message, answers)
        lease.record_told()
        return told


def _outcome(word: str) -> Outcome | None:
    try:
        return Outcome(word)
    except ValueError:  # a word a newer version wrote
        return None
