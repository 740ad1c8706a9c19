"""The JetStream worker loop (``INTAKE=jetstream``; started by `python -m gateway.intake.worker`).

Every worker pulls from the one durable consumer and does for each delivery what the spool worker does for
an entry. One process runs WORKER_CONCURRENCY loops at once (threads: an attempt mostly waits on the media
host, audio, vision and storage), each fetching one delivery at a time:

- process every item with the gateway's MediaProcessor (idempotent per (MessageSid, index): an item an
  earlier delivery stored is found, not stored again), signalling ``in_progress`` every third of the ack
  wait so a long attempt is not handed to a second worker;
- every item final: ack (the server deletes the message);
- some item retryable: nak with the spool's backoff (SPOOL_RETRY_BASE_S/MAX_S, jitter), so retries of many
  messages failing in one outage spread out;
- on the last delivery INTAKE_MAX_ATTEMPTS allows: the failing items get their final sentence ("please send
  it again") and the message goes to the dead letters (``python -m gateway.intake.dead_letters``).

After an attempt the answers are offered to the webhook waiting for them (gateway.intake.jetstream_intake);
once the message is done and no webhook took them, ``tell`` sends them to the user (the webhook answered
"I'll do it shortly"). A deferral (nak) is offered too, so a waiting webhook answers at once, but never told.

The final outcome is told at most once across redeliveries and workers: before offering it or telling it
the worker claims the message in the ``<stream>_TOLD`` bucket (``JetStreamQueue.claim_telling``), and only
the claimant offers or tells; then the delivery is settled. A message done again (its ack was lost to a
NATS restart) finds the claim and tells nobody. While NATS does not answer the claim the worker keeps
asking under the same name (signalling progress): a claim that timed out may have landed after all, and
asking again finds it its own; if a redelivery went to another worker meanwhile, exactly one of the two
names is in the bucket. Stopped (SIGTERM) before NATS answered, it tells nobody and the delivery is
nak'ed or left unsettled, so the redelivery claims and tells; on the last allowed delivery (none follows)
it tells without a claim. What is left (see gateway.intake.jetstream): a worker killed between its claim
and the send, a send the channel's API refuses, or a worker stopped just as its claim was landing, leaves
that user untold: at most once, never twice.

While NATS is unreachable the loop logs it and keeps trying: the worker starts and stays up without it.
SIGTERM (``stop``): every loop finishes and settles the delivery in hand, none fetches another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gateway import metrics
from gateway.budget import Budget
from gateway.intake import ItemAnswer
from gateway.intake.jetstream import Delivery, IntakeUnavailable, JetStreamQueue
from gateway.intake.jetstream_intake import decode_message, encode_answers
from gateway.intake.spool import Backoff
from gateway.message import InboundMessage, InvalidWebhook
from gateway.processing import ItemResult, MediaProcessor
from gateway.sender import InvalidSender

logger = logging.getLogger(__name__)

# Tells the user how a message ended when no webhook was waiting for it; True if told.
Tell = Callable[[InboundMessage, list[ItemAnswer]], bool]
# Longest pause between tries while NATS is unreachable (the backoff's own cap may be a minute).
_MAX_UNREACHABLE_PAUSE_S = 5.0
# Pause between asks of a claim to tell an outcome that NATS did not answer.
_CLAIM_RETRY_S = 0.5


@dataclass(frozen=True)
class Handled:
    """What one delivery came to: how it was settled, the answers, and who told the user."""

    message_sid: str
    settled: str  # "acked", "naked", "dead_lettered", or "unsettled" (NATS failed us: it comes back)
    answers: tuple[ItemAnswer, ...] = ()
    # "webhook", "tell", "nobody" (tell failed or could not), "already" (an earlier delivery or another
    # worker holds the claim), "" (not told: deferred, or NATS could not be asked for the claim)
    told_by: str = ""


class JetStreamWorker:
    def __init__(
        self,
        queue: JetStreamQueue,
        processor: MediaProcessor,
        *,
        backoff: Backoff,
        attempt_budget_s: float,
        tell: Tell,
        heartbeat: Callable[[], object] = lambda: None,
        housekeeping: Callable[[], object] | None = None,
        fetch_timeout_s: float = 1.0,
        dead_letter_sweep_s: float = 60.0,
        offer_timeout_s: float = 1.0,
    ) -> None:
        self._queue = queue
        self._processor = processor
        self._backoff = backoff
        self._attempt_budget_s = attempt_budget_s
        self._tell = tell
        # Called every turn of the loop (the worker's /healthz: alive and not stuck).
        self._heartbeat = heartbeat
        # The privacy sweep (expiry, old markers), at its own pace.
        self._housekeeping = housekeeping
        self._fetch_timeout_s = fetch_timeout_s
        self._dead_letter_sweep_s = dead_letter_sweep_s
        self._next_dead_letter_sweep = 0.0
        self._offer_timeout_s = offer_timeout_s
        # A sign of life every third of the ack wait while an attempt runs.
        self._progress_every_s = queue.settings.ack_wait_s / 3
        # The sweeps (dead letters, privacy) run on whichever loop is free, one at a time.
        self._chores = threading.Lock()

    def run(self, stop: threading.Event, concurrency: int = 1) -> None:
        """Fetch and handle deliveries on ``concurrency`` loops until ``stop`` (each checks it between
        deliveries); returns once every loop has settled the delivery in hand. A loop that fails
        unexpectedly stops them all and its error is raised here: the process exits and is restarted,
        as a one-loop worker would be."""
        settings = self._queue.settings
        logger.info("jetstream worker started", extra={"nats_url": settings.url, "stream": settings.stream,
                                                       "consumer": settings.consumer,
                                                       "max_deliver": settings.max_deliver,
                                                       "concurrency": concurrency})
        if concurrency == 1:
            self._loop(stop)
        else:
            errors: list[BaseException] = []

            def loop() -> None:
                try:
                    self._loop(stop)
                except BaseException as error:
                    logger.exception("a worker loop failed; stopping the others")
                    errors.append(error)
                    stop.set()

            loops = [threading.Thread(target=loop, name=f"jetstream-worker-{n}") for n in range(concurrency)]
            for thread in loops:
                thread.start()
            for thread in loops:
                thread.join()
            if errors:
                raise errors[0]
        logger.info("jetstream worker stopped")

    def _loop(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._heartbeat()
            try:
                self.run_once(stop)
                self._if_free(self.sweep_dead_letters_if_due)
            except IntakeUnavailable as error:
                failures += 1
                pause_s = min(_MAX_UNREACHABLE_PAUSE_S, self._backoff.delay(failures))
                logger.warning("NATS unreachable; the worker keeps trying",
                               extra={"error": str(error), "failures": failures, "retry_in_s": round(pause_s, 2)})
                stop.wait(pause_s)
                continue
            if failures:
                logger.info("NATS reachable again", extra={"after_failures": failures})
                failures = 0
            if self._housekeeping is not None:
                self._if_free(self._housekeeping)

    def _if_free(self, chore: Callable[[], object]) -> None:
        """Run ``chore`` unless another loop is running one (it is due once, not once per loop)."""
        if not self._chores.acquire(blocking=False):
            return
        try:
            chore()
        finally:
            self._chores.release()

    def run_once(self, stop: threading.Event | None = None) -> list[Handled]:
        """One fetch (waiting up to the fetch timeout) and the handling of what came; IntakeUnavailable
        when NATS cannot be asked."""
        handled = []
        for delivery in self._queue.fetch(batch=1, timeout_s=self._fetch_timeout_s):
            if stop is not None and stop.is_set():  # not started: it goes back at once, for another worker
                _settle(delivery, "nak", delivery.nak)
                break
            handled.append(self.handle(delivery, stop))
        return handled

    def sweep_dead_letters_if_due(self, now: float | None = None) -> int:
        """Move messages whose worker died on their last delivery into the dead letters, now and then."""
        now = time.monotonic() if now is None else now
        if now < self._next_dead_letter_sweep:
            return 0
        self._next_dead_letter_sweep = now + self._dead_letter_sweep_s
        return self._queue.sweep_dead_letters()

    def handle(self, delivery: Delivery, stop: threading.Event | None = None) -> Handled:
        """Process one delivery, tell whoever must hear the outcome and settle it; never raises for NATS.
        While NATS does not answer the claim to tell, this waits for it, until ``stop``."""
        try:
            message, received_at = decode_message(delivery.payload)
        except (InvalidWebhook, InvalidSender) as error:
            # Only a message from another version (or a damaged one) gets here: kept for a person to look at.
            logger.error("queued message does not parse; dead-lettered",
                         extra={"message_sid": delivery.message_id, "error": str(error)})
            settled = _settle(delivery, "dead_lettered", lambda: delivery.dead_letter("unreadable"))
            return Handled(delivery.message_id, settled)
        extra = {"message_sid": message.message_sid, "delivery": delivery.number}
        budget = Budget(self._attempt_budget_s)
        with self._progress(delivery):
            results = {item.index: self._processor.process(message, item, budget, received_at)
                       for item in message.media}
        pending = {index: result.outcome for index, result in results.items() if result.retryable}
        if pending and not delivery.is_last:
            delay_s = self._backoff.delay(delivery.number)
            metrics.record_attempt(message.media, results, will_retry=True)
            settled = _settle(delivery, "naked", lambda: delivery.nak(delay_s))
            logger.info("queued message will be retried",
                        extra={**extra, "outcomes": pending, "retry_in_s": round(delay_s, 2)})
            answers = _answers(message, results, deferring=True)
            taken = self._offer(message, answers)
            return Handled(message.message_sid, settled, tuple(answers), "webhook" if taken else "")
        if pending:  # the last allowed delivery (INTAKE_MAX_ATTEMPTS): what still fails is given up, said so
            content_types = {item.index: item.content_type for item in message.media}
            results = {i: r.given_up(content_types[i]) if r.retryable else r for i, r in results.items()}
        metrics.record_attempt(message.media, results, will_retry=False)
        answers = _answers(message, results, deferring=False)
        # Told before settling, under a claim: a settle that fails brings the message back, and its next
        # delivery finds the claim and tells nobody again.
        with self._progress(delivery):
            claimed = self._claim_telling(delivery, stop)
        if claimed is None and not delivery.is_last:  # stopped before NATS said: the redelivery claims
            delay_s = self._backoff.delay(delivery.number)
            settled = _settle(delivery, "naked", lambda: delivery.nak(delay_s))
            logger.info("outcome not told yet: NATS unreachable; the message comes back",
                        extra={**extra, "retry_in_s": round(delay_s, 2)})
            return Handled(message.message_sid, settled, tuple(answers), "")
        # No claim and no delivery after this one (max_deliver): tell without one, or nobody would.
        if claimed is False:
            told_by = "already"
            logger.info("outcome told already (an earlier delivery or another worker)", extra=extra)
        else:
            told_by = self._tell_done(message, answers)
        if pending:
            reason = ",".join(sorted({str(outcome) for outcome in pending.values()}))
            logger.error("gave up on a queued message", extra={**extra, "outcomes": pending})
            settled = _settle(delivery, "dead_lettered", lambda: delivery.dead_letter(reason))
        else:
            settled = _settle(delivery, "acked", delivery.ack)
        return Handled(message.message_sid, settled, tuple(answers), told_by)

    def _claim_telling(self, delivery: Delivery, stop: threading.Event | None) -> bool | None:
        """The claim, asked again under the same name until NATS answers it (a claim that timed out may
        have landed after all: asking again finds it ours), or None once ``stop`` is set."""
        while True:
            claimed = self._queue.claim_telling(delivery.publish_id, delivery.claimant)
            if claimed is not None:
                return claimed
            if stop is None:
                stop = threading.Event()
            # Waiting for NATS is not being stuck: /healthz must not get this worker restarted for it.
            self._heartbeat()
            if stop.wait(_CLAIM_RETRY_S):
                return None

    def _offer(self, message: InboundMessage, answers: list[ItemAnswer]) -> bool:
        return self._queue.offer_outcome(message.message_sid, encode_answers(answers),
                                         timeout_s=self._offer_timeout_s)

    def _tell_done(self, message: InboundMessage, answers: list[ItemAnswer]) -> str:
        if self._offer(message, answers):
            return "webhook"
        try:
            told = self._tell(message, answers)
        except Exception:  # noqa: BLE001 - the outcome is stored either way; only the message is lost
            logger.exception("telling the user the outcome failed", extra={"message_sid": message.message_sid})
            told = False
        return "tell" if told else "nobody"

    @contextmanager
    def _progress(self, delivery: Delivery) -> Iterator[None]:
        """``in_progress`` every third of the ack wait until the block ends."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self._progress_every_s):
                try:
                    delivery.in_progress()
                except IntakeUnavailable as error:  # it may come back to another worker: idempotent
                    logger.warning("could not signal progress", extra={"message_sid": delivery.message_id,
                                                                      "error": str(error)})

        beater = threading.Thread(target=beat, name="nats-progress", daemon=True)
        beater.start()
        try:
            yield
        finally:
            done.set()
            beater.join()


def _answers(message: InboundMessage, results: dict[int, ItemResult], *, deferring: bool) -> list[ItemAnswer]:
    """One answer per item: its sentence, or "received, shortly" for a retryable one that will be retried."""
    return [ItemAnswer.of(results[item.index], item.content_type, will_retry=deferring) for item in message.media]


def _settle(delivery: Delivery, what: str, action: Callable[[], object]) -> str:
    try:
        action()
    except IntakeUnavailable as error:
        # Not settled: after the ack wait the server delivers it again and it is done again (idempotent).
        logger.warning("could not settle a delivery; it will come back",
                       extra={"message_sid": delivery.message_id, "meant": what, "error": str(error)})
        return "unsettled"
    return what
