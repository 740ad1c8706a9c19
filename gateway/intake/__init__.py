"""The intake: what takes a verified message from a channel's webhook and answers for each of its media items.

    spool.py     the on-disk spool: one fsync'd entry per message, leased with flock
    attempt.py   one attempt at a spooled message (the same for the webhook and the worker)
    spooled.py   SpoolIntake: the spool and the attempts behind the ``Intake`` interface below
    worker.py    `python -m gateway.intake.worker`: finishes what the webhooks could not
    worker_http.py  a worker's /healthz (its loop's heartbeat) and /metrics, on WORKER_METRICS_PORT
    channels.py  a spooled message read back, in today's format or the one before it

    jetstream.py         JetStreamQueue: the NATS JetStream stream, consumer, dead letters and outcome hand-off
    jetstream_intake.py  JetStreamIntake: the queue behind the ``Intake`` interface (INTAKE=jetstream)
    jetstream_worker.py  the JetStream worker loop; jetstream_main.py wires it for `gateway.intake.worker`
    dead_letters.py      `python -m gateway.intake.dead_letters`: list, replay, drop
    housekeeping.py      the privacy sweep a worker runs now and then
    nats_local.py        `make run`'s nats-server, only with INTAKE=jetstream

``Intake`` is the seam between the webhooks and how messages are kept until they are done: the spool
(one machine) or JetStream (a stream with a pool of workers, the gateway waiting briefly for the outcome),
chosen by INTAKE, without the webhooks, the metrics or privacy changing. The app's
Services build it once (gateway.services); the webhooks, /metrics, /readyz and the privacy commands all
use that one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from gateway import replies
from gateway.budget import Budget
from gateway.message import InboundMessage
from gateway.outcome import Outcome

if TYPE_CHECKING:
    from gateway.processing import ItemResult

__all__ = ["Forgets", "Intake", "ItemAnswer"]


@dataclass(frozen=True)
class ItemAnswer:
    """What the user is told now about one media item, and what is known of it."""

    sentence: str
    # None: another delivery of the same message is being handled right now, or (deferred) the message is
    # queued and no attempt has finished yet (the sentence says "received").
    outcome: Outcome | None
    # True: the intake keeps the item and will try again (the sentence says it will be done shortly).
    deferred: bool = False

    @classmethod
    def of(cls, result: ItemResult, content_type: str, *, will_retry: bool) -> ItemAnswer:
        """What the user is told of an attempt's result: its sentence, or "received, it will be done shortly"
        for one that failed in a way worth retrying when the intake will try again. Both intakes answer so."""
        if will_retry and result.retryable:
            return cls(replies.received(content_type), result.outcome, deferred=True)
        return cls(result.reply, result.outcome)

    @property
    def log_word(self) -> str:
        """The item's word in the webhook's log line: "saved", "spooled:unavailable", "in_progress"."""
        if self.outcome is None:  # JetStream: queued, no attempt finished within the webhook's wait
            return "queued" if self.deferred else "in_progress"
        return f"spooled:{self.outcome}" if self.deferred else str(self.outcome)


class Forgets(Protocol):
    """What an erasure needs of an intake: to drop what it still keeps of one sender."""

    def forget_sender(self, sender_id: str) -> int:
        """Remove every message of ``sender_id`` still waiting (or given up on); returns how many."""
        ...


class Intake(Forgets, Protocol):
    def accept(self, message: InboundMessage, budget: Budget, received_at: datetime) -> list[ItemAnswer]:
        """Keep ``message`` and try its media items within ``budget``; one answer per item, in order. What
        could not be finished in time is kept and done later (``deferred``). Never raises."""
        ...

    def ready(self) -> bool:
        """Whether a message accepted now would be kept (for /readyz: the spool's directory is writable)."""
        ...

    def depth(self) -> int:
        """Messages accepted and not yet done (for /metrics)."""
        ...

    def oldest_age_s(self) -> float:
        """Seconds since the oldest of those arrived; 0 when there is none (for /metrics)."""
        ...
