"""NATS JetStream as the gateway's durable intake (``INTAKE=jetstream``), behind blocking methods.

The same guarantees as the spool (gateway.spool), for gateways and workers spread over many nodes:

- Accepted means stored: ``publish`` returns only after the stream's PubAck, i.e. after the server has
  written the message to its file store (and, with ``replicas`` > 1, to a quorum of servers).
- One message per MessageSid: every publish carries ``Nats-Msg-Id`` = the message id, and the server
  drops a second publish of an id inside the stream's duplicate window (PubAck.duplicate). The window is
  hours, not NATS's 2-minute default: Twilio retries a webhook, replays it from its debugger, and a proxy
  can resend one long after 2 minutes; each of those must still find the first copy.
- One worker at a time: one durable pull consumer shared by every worker, explicit ack. A delivery not
  acked within the ack wait (a worker killed mid-attempt) is delivered again, after ``backoff_s``; a
  failed attempt is retried with ``nak(delay)``; ``max_deliver`` caps a poison message.
- Nothing vanishes: a work-queue stream deletes a message when it is acked or termed (checked against
  the server: ``term()`` deletes it, no advisory). A message that reached ``max_deliver`` without an ack
  stays in the work stream, never delivered again, and the server publishes a MAX_DELIVERIES advisory
  (payload-less: stream, consumer, stream_seq, deliveries). So dead letters take two paths into one
  dead-letter stream, both keeping the payload for a replay:
    1. the worker, on the last allowed delivery, calls ``Delivery.dead_letter(reason)``: a copy of the
       message goes to ``<prefix>.dead.<sender key>``, then the original is termed;
    2. a worker that died on the last delivery cannot: the dead-letter stream also captures the
       MAX_DELIVERIES advisories, and ``sweep_dead_letters()`` copies the message each one names out of
       the work stream into the dead-letter subject and deletes the original and the advisory.
  The copy's ``Nats-Msg-Id`` is ``<id>~dead~<work seq>`` in both paths, so a worker that copied and
  then crashed before its term is not dead-lettered twice.
- Erasure: subjects are ``<prefix>.in.<sender key>`` (an HMAC of the sender id, hex: no phone number in
  a subject, a log line or a monitoring page), so one sender's waiting and dead messages are purged by
  subject filter.

Outcome hand-off ("publish, wait briefly for the outcome, reply"): the webhook subscribes to
``<prefix>.outcome.<message id>`` before it publishes (one connection: the server sees the SUB first),
then waits up to its budget. The worker, after an attempt, offers the outcome as a request on that
subject. A waiting webhook answers "taken" and must then use it in its reply; a webhook that stopped
waiting answers nothing (and unsubscribes), so the worker sees no responder or a timeout and tells the
user itself later. "Taken" is decided under a lock against the webhook's own timeout, so exactly one of
the two tells the user, except when the connection breaks between the webhook taking the outcome and
its "taken" reaching the worker: then both do (the user is told twice, never not at all).

Telling once: when no webhook took a message's final outcome the worker tells the user itself, and a
message can be done more than once (its ack was lost to a NATS restart, so it was delivered again; or
the ack landed but its confirmation did not). A KeyValue bucket, ``<stream>_TOLD`` (file storage, the
stream's replicas, entries kept for the duplicate window), holds one key per published message that
someone has been given the right to tell, its value the claimant (``<stream seq>.<delivery number>``):
the worker claims it with the bucket's atomic ``create`` (``claim_telling``) before it offers the outcome
to a waiting webhook or tells the user, and only the claimant offers or tells; any other delivery that
finds the key tells nobody. A claim NATS does not answer may still land after the reconnect (nats-py
resends its buffer), so the worker asks again under the same name until NATS answers (and finds its own
name if it landed). What is left: a worker killed between its claim and the send, a send the channel's
API refuses, and a claim that landed only after its worker was stopped (SIGTERM while NATS was down)
leave the user untold: at most once, never twice. The key is the publish id (``Nats-Msg-Id``), so a replayed dead letter, a new
publish, is told its new outcome. Keys are message ids, values delivery numbers: an erasure need not
touch the bucket.

Threads and processes: nats-py is asyncio and the gateway is not (gunicorn threads, a worker process),
so each JetStreamQueue runs one event loop in a daemon thread, with one connection, and its methods
block on ``run_coroutine_threadsafe(...).result(timeout)``. Make one per process. It connects lazily,
on first use, in the process that uses it: a JetStreamQueue made before gunicorn forks notices the new
pid and starts its own loop and connection in the child. While NATS is unreachable every call that
needs the server raises ``IntakeUnavailable`` at once (or within its timeout), never hangs past it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MSG_ID_HEADER = "Nats-Msg-Id"
# The message id as the gateway knows it (MessageSid / Telegram id): Nats-Msg-Id differs on a replay.
MESSAGE_ID_HEADER = "Mediabot-Message-Id"
DELIVERIES_HEADER = "Mediabot-Deliveries"
REASON_HEADER = "Mediabot-Dead-Reason"
WORK_SEQ_HEADER = "Mediabot-Work-Seq"
PUBLISHED_AT_HEADER = "Mediabot-Published-At"
_TAKEN = b"taken"
# A subject token: no dots, spaces or wildcards. MessageSids, Telegram ids and hex keys all qualify.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Connectivity failures, as opposed to answers from the server (NotFound, BadRequest, ...).
_UNAVAILABLE = (
    nats.errors.TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError,
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.NoServersError,
    nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError, nats.errors.ConnectionDrainingError,
    nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError, OSError,
)
# Added to a call's own timeout before the calling thread gives up on the event loop.
_LOOP_MARGIN_S = 1.0


@dataclass(frozen=True)
class JetStreamSettings:
    """Everything the JetStream intake needs; the gateway's config fills it from the environment."""

    # One URL or several, comma-separated (nats://host:4222,nats://other:4222).
    url: str = "nats://127.0.0.1:4222"
    stream: str = "MEDIABOT_INTAKE"
    dead_letter_stream: str = "MEDIABOT_DEAD_LETTERS"
    subject_prefix: str = "mediabot"
    consumer: str = "worker"
    # 1 on one server; 3 on a k8s cluster of 3 (a message survives losing one server).
    replicas: int = 1
    # Hours, not NATS's 2-minute default: Twilio's retries and replays and a proxy's resend of a webhook
    # can come long after 2 minutes, and each must be dropped as a duplicate of the first copy.
    duplicate_window_s: float = 6 * 3600.0
    # How long a delivery may go unacked (no ack, nak or in_progress) before another worker gets it:
    # longer than one attempt. With ``backoff_s`` the server uses backoff_s[0] as the ack wait.
    ack_wait_s: float = 60.0
    # Waits before the 1st, 2nd, ... redelivery of a delivery that was never acked (its worker died);
    # each at least ``ack_wait_s``, so an attempt still running is not handed to a second worker.
    backoff_s: tuple[float, ...] = (60.0, 120.0, 300.0, 600.0)
    # Deliveries in all (naks included) before a message is dead-lettered: the poison cap.
    max_deliver: int = 50
    dead_letter_max_age_s: float = 30 * 24 * 3600.0
    # Key of the HMAC that turns a sender id into its subject token. Without one the token is a plain
    # hash, which hides a phone number from a casual look but not from a search of all numbers.
    sender_key_secret: str = ""
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 1.0
    # -1: keep reconnecting for ever once connected (a restarted server is found again).
    max_reconnect_attempts: int = -1
    # Administrative calls (stream and consumer info, purges, dead-letter reads).
    request_timeout_s: float = 5.0
    # Publish wait for the PubAck when the caller gives no timeout of its own.
    publish_timeout_s: float = 5.0
    client_name: str = "mediabot"

    def __post_init__(self) -> None:
        for name in ("stream", "dead_letter_stream", "subject_prefix", "consumer"):
            if not _TOKEN.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} must be letters, digits, '-' or '_'")
        if self.stream == self.dead_letter_stream:
            raise ValueError("stream and dead_letter_stream must differ")
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.duplicate_window_s <= 0 or self.ack_wait_s <= 0:
            raise ValueError("duplicate_window_s and ack_wait_s must be positive")
        if self.backoff_s and min(self.backoff_s) < self.ack_wait_s:
            raise ValueError("every backoff_s entry must be at least ack_wait_s (an attempt must fit in it)")
        if self.max_deliver != -1 and self.max_deliver <= len(self.backoff_s):
            raise ValueError("max_deliver must be greater than the number of backoff_s entries")

    @property
    def work_subjects(self) -> str:
        return f"{self.subject_prefix}.in.>"

    @property
    def dead_subjects(self) -> str:
        return f"{self.subject_prefix}.dead.>"

    @property
    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer}"

    def work_subject(self, sender_key: str) -> str:
        return f"{self.subject_prefix}.in.{_token(sender_key, 'sender_key')}"

    def dead_subject(self, sender_key: str) -> str:
        return f"{self.subject_prefix}.dead.{_token(sender_key, 'sender_key')}"

    @property
    def told_bucket(self) -> str:
        """The KeyValue bucket of "someone tells this message's outcome" claims."""
        return f"{self.stream}_TOLD"

    def outcome_subject(self, message_id: str) -> str:
        return f"{self.subject_prefix}.outcome.{_token(message_id, 'message_id')}"


class IntakeUnavailable(RuntimeError):
    """NATS is unreachable or did not answer in time: the operation is not confirmed (for a publish: the
    message is not accepted, tell the user; see ``JetStreamQueue.publish`` for the one caveat)."""


class DeadLetterNotFound(LookupError):
    """No dead letter has that id (dropped, replayed, expired, or never was)."""


def sender_key(sender_id: str, secret: str = "") -> str:
    """The opaque subject token of a sender: HMAC-SHA256 of the sender id, 32 hex digits."""
    digest = hmac.new(secret.encode(), sender_id.encode(), hashlib.sha256).hexdigest()
    return digest[:32]


class Delivery:
    """One delivery of a queued message to a worker. Settle it exactly once: ack, nak, term or dead_letter."""

    def __init__(self, intake: JetStreamQueue, msg: Msg) -> None:
        self._intake = intake
        self._msg = msg
        metadata = msg.metadata
        headers = msg.headers or {}
        self.payload: bytes = msg.data
        self.message_id: str = headers.get(MESSAGE_ID_HEADER) or headers.get(MSG_ID_HEADER, "")
        # The id this copy was published under: the message id, or ``<id>~replay~<n>`` for a replay.
        self.publish_id: str = headers.get(MSG_ID_HEADER) or self.message_id
        self.sender_key: str = msg.subject.rsplit(".", 1)[-1]
        # 1 for the first delivery; naks and ack timeouts both count.
        self.number: int = metadata.num_delivered
        self.stream_seq: int = metadata.sequence.stream
        # When the stream stored it (the first publish; for a replay, the replay).
        self.published_at: datetime = metadata.timestamp
        max_deliver = intake.settings.max_deliver
        # The last allowed delivery: a failure now must be final (dead_letter) and the user told so.
        self.is_last: bool = max_deliver != -1 and self.number >= max_deliver
        # Whose claim to tell the outcome (claim_telling): every delivery of a message has its own number.
        self.claimant: str = f"{self.stream_seq}.{self.number}"

    def ack(self) -> None:
        """Done: the server deletes the message. Waits for the server to confirm the ack."""
        self._intake._call(lambda _c: self._msg.ack_sync(timeout=self._intake.settings.request_timeout_s))

    def nak(self, delay_s: float = 0.0) -> None:
        """Try again after ``delay_s`` (this delivery counts towards max_deliver)."""
        self._intake._call(lambda _c: self._msg.nak(delay=delay_s if delay_s > 0 else None))

    def term(self) -> None:
        """Never again, and keep nothing: the server deletes the message (no dead letter). Waits for the
        server to confirm, so a purge or a count right after sees it gone."""
        timeout = self._intake.settings.request_timeout_s
        # What Msg.ack_sync does for an ack: the ack as a request, which the server answers once applied.
        self._intake._call(lambda c: c.nc.request(self._msg.reply, b"+TERM", timeout=timeout))

    def in_progress(self) -> None:
        """Still working on it: restarts the ack wait, so a long attempt is not handed to another worker."""
        self._intake._call(lambda _c: self._msg.in_progress())

    def dead_letter(self, reason: str) -> int:
        """Give up: a copy goes to the dead-letter stream (for ``replay``), then the message is termed.
        ``reason`` is a short code (outcomes, never a phone number). Returns the dead letter's id."""
        dead_id = self._intake._copy_to_dead_letters(
            message_id=self.message_id, sender_key=self.sender_key, payload=self.payload,
            work_seq=self.stream_seq, deliveries=self.number, reason=reason, published_at=self.published_at,
        )
        self.term()
        logger.error("message dead-lettered", extra={"message_sid": self.message_id, "deliveries": self.number,
                                                    "reason": reason, "dead_letter_id": dead_id})
        return dead_id


@dataclass(frozen=True)
class DeadLetter:
    """A message given up on, kept with its payload in the dead-letter stream until replayed or dropped."""

    id: int  # its sequence in the dead-letter stream
    message_id: str
    sender_key: str
    deliveries: int
    reason: str
    dead_at: datetime
    published_at: datetime | None
    payload: bytes = field(repr=False)


class OutcomeWaiter:
    """The webhook's side of the outcome hand-off; made by ``JetStreamQueue.wait_outcome``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = threading.Event()
        self._state = "waiting"  # -> "taken" (the worker's offer answered) or "closed" (gave up)
        self._payload: bytes | None = None

    def wait(self, timeout_s: float) -> bytes | None:
        """The outcome a worker handed over within ``timeout_s`` (the caller MUST use it in its reply), or
        None: then this waiter refuses every later offer and the worker tells the user itself."""
        self._taken.wait(max(0.0, timeout_s))
        with self._lock:
            if self._state == "taken":
                return self._payload
            self._state = "closed"
            return None

    def _close(self) -> bool:
        """Stop taking offers; True if one was taken (the caller should have waited for it)."""
        with self._lock:
            if self._state == "waiting":
                self._state = "closed"
            return self._state == "taken"

    async def _on_offer(self, msg: Msg) -> None:
        # Runs on the event loop thread. Decided under the lock, so a webhook whose wait() has just timed
        # out can never also take the outcome; a refusal is silence (another waiter may still take it).
        with self._lock:
            if self._state != "waiting":
                return
            self._state = "taken"
            self._payload = msg.data
        self._taken.set()
        await msg.respond(_TAKEN)


@dataclass
class _Connection:
    nc: NATS
    js: JetStreamContext
    told: KeyValue
    pull: JetStreamContext.PullSubscription | None = None


class _EventLoopThread:
    """An asyncio loop running in a daemon thread; coroutines are submitted from any other thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats-intake", daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class JetStreamQueue:
    """The work stream, its consumer and the dead letters, for one process; see the module docstring."""

    def __init__(self, settings: JetStreamSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._loop: _EventLoopThread | None = None
        self._conn: _Connection | None = None
        self._fetch_lock = threading.Lock()
        self._next_connect_at = 0.0

    # --- accepting -----------------------------------------------------------------------------------

    def publish(self, message_id: str, payload: bytes, sender_key: str, *, timeout_s: float | None = None) -> bool:
        """Store a message for the workers; True if it is new, False if the server already had this id
        (a replayed webhook: dropped). Raises IntakeUnavailable if it is not confirmed stored in time:
        at once while the client knows the connection is down; within ``timeout_s`` if the server died
        unnoticed, and then the publish may still reach the server after the reconnect (nats-py resends
        what it had buffered), so "not confirmed" is not "not stored". A second publish of the same id
        is deduplicated either way."""
        subject = self.settings.work_subject(sender_key)
        _token(message_id, "message_id")
        timeout = self.settings.publish_timeout_s if timeout_s is None else timeout_s
        headers = {MSG_ID_HEADER: message_id, MESSAGE_ID_HEADER: message_id}

        def publish(conn: _Connection) -> Awaitable[object]:
            return conn.js.publish(subject, payload, timeout=timeout, headers=headers)

        # The PubAck wait inside publish raises first; the outer bound is for a stuck loop.
        ack = self._call(publish, timeout_s=timeout + 0.1)
        return not ack.duplicate  # type: ignore[attr-defined]

    def ready(self) -> bool:
        """Connected and the stream answers: this process can accept and keep a message right now."""
        try:
            self._call(lambda c: c.js.stream_info(self.settings.stream))
        except (IntakeUnavailable, nats.js.errors.Error):
            return False
        return True

    def depth(self) -> int:
        """Messages owed work: waiting for a worker plus delivered and not yet acked."""
        info = self._call(lambda c: c.js.consumer_info(self.settings.stream, self.settings.consumer))
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def oldest_age_s(self) -> float:
        """Seconds since the oldest message still owed work was stored; 0 when none is."""
        settings = self.settings

        async def oldest(conn: _Connection) -> datetime | None:
            info = await conn.js.consumer_info(settings.stream, settings.consumer)
            # Everything at or below the ack floor is done; in a work queue acked messages are deleted,
            # so the first message above it is the oldest one owed work.
            start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
            try:
                msg = await conn.js.get_msg(settings.stream, start, subject=settings.work_subjects, next=True)
            except nats.js.errors.NotFoundError:
                return None
            return msg.time

        stored_at = self._call(oldest)
        return max(0.0, time.time() - stored_at.timestamp()) if stored_at else 0.0

    def purge_sender(self, sender_key: str) -> int:
        """Delete every message of one sender, waiting or dead-lettered (an erasure); how many."""
        purged = 0
        for stream, subject in ((self.settings.stream, self.settings.work_subject(sender_key)),
                                (self.settings.dead_letter_stream, self.settings.dead_subject(sender_key))):
            purged += self._purge(stream, subject)
        return purged

    # --- working -------------------------------------------------------------------------------------

    def fetch(self, batch: int = 1, timeout_s: float = 1.0) -> list[Delivery]:
        """Up to ``batch`` deliveries, waiting up to ``timeout_s`` for the first; [] if none came."""
        settings = self.settings

        async def fetch(conn: _Connection) -> list[Msg]:
            if conn.pull is None:
                conn.pull = await conn.js.pull_subscribe_bind(settings.consumer, stream=settings.stream)
            try:
                return await conn.pull.fetch(batch, timeout=timeout_s)
            except asyncio.TimeoutError:  # nats-py raises its own subclass or asyncio's for "none came"
                if not conn.nc.is_connected:
                    raise
                return []

        # One pull request at a time per connection: concurrent fetches on one subscription mix replies.
        with self._fetch_lock:
            # The pull request's own timeout ends an empty wait; the outer one only a dead connection.
            msgs = self._call(fetch, timeout_s=timeout_s + self.settings.request_timeout_s)
        return [Delivery(self, msg) for msg in msgs]

    # --- outcome hand-off ----------------------------------------------------------------------------

    @contextmanager
    def wait_outcome(self, message_id: str) -> Iterator[OutcomeWaiter]:
        """Enter before ``publish``, then ``wait(budget)`` inside; offers after the block are refused."""
        subject = self.settings.outcome_subject(message_id)
        waiter = OutcomeWaiter()
        sub = self._call(lambda c: c.nc.subscribe(subject, cb=waiter._on_offer))
        try:
            yield waiter
        finally:
            if waiter._close():
                logger.debug("outcome taken", extra={"message_sid": message_id})
            try:
                # Also while reconnecting: nats-py would otherwise subscribe it again after the reconnect.
                self._call(lambda c: _unsubscribe(c, sub), require_connected=False)
            except IntakeUnavailable:
                pass  # the waiter refuses every offer anyway

    def offer_outcome(self, message_id: str, payload: bytes, timeout_s: float = 1.0) -> bool:
        """Hand an attempt's outcome to the webhook waiting for it; True if it took it (it tells the
        user), False if none did (no responders, timeout, NATS down): then the caller tells the user."""
        subject = self.settings.outcome_subject(message_id)

        async def offer(conn: _Connection) -> bool:
            try:
                reply = await conn.nc.request(subject, payload, timeout=timeout_s)
            except nats.errors.NoRespondersError:
                return False
            except nats.errors.TimeoutError:
                logger.warning("no webhook answered the outcome offer", extra={"message_sid": message_id})
                return False
            return reply.data == _TAKEN

        try:
            return self._call(offer, timeout_s=timeout_s + _LOOP_MARGIN_S)
        except IntakeUnavailable:
            return False

    def claim_telling(self, publish_id: str, claimant: str) -> bool | None:
        """The right to tell the user this message's outcome (offer it to the webhook, or send it): True
        for the first claimant ever (within the duplicate window), False for every other one, None when
        NATS cannot say (unreachable): then tell nobody now. ``publish_id`` is ``Delivery.publish_id``;
        ``claimant`` names this try (``Delivery.claimant``) and must be the same when it asks again: a
        claim that timed out may still reach the server after the reconnect (nats-py resends what it
        had buffered), and asking again then finds its own name and answers True."""
        key = _told_key(publish_id)

        async def claim(conn: _Connection) -> bool | None:
            try:
                await conn.told.create(key, claimant.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await conn.told.get(key)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    return None  # the claim expired or was deleted since: asking again creates it
                return entry.value == claimant.encode()
            return True

        try:
            return self._call(claim)
        except IntakeUnavailable as error:
            logger.warning("could not claim the telling of an outcome",
                           extra={"message_sid": publish_id, "error": str(error)})
            return None

    # --- dead letters --------------------------------------------------------------------------------

    def sweep_dead_letters(self) -> int:
        """Turn MAX_DELIVERIES advisories into dead letters with their payloads (see the module docstring);
        how many messages were moved. Safe to run anywhere, any number of times, concurrently."""
        settings = self.settings
        moved = 0
        for advisory_seq, advisory in self._read_stream(settings.dead_letter_stream, settings.max_deliveries_advisory):
            event = json.loads(advisory.data)
            work_seq = int(event["stream_seq"])
            try:
                original = self._call(lambda c, s=work_seq: c.js.get_msg(settings.stream, s))
            except nats.js.errors.NotFoundError:
                original = None  # acked late, purged for an erasure, or already swept
            if original is not None:
                headers = original.headers or {}
                message_id = headers.get(MESSAGE_ID_HEADER) or headers.get(MSG_ID_HEADER, "")
                self._copy_to_dead_letters(
                    message_id=message_id, sender_key=original.subject.rsplit(".", 1)[-1], payload=original.data,
                    work_seq=work_seq, deliveries=int(event.get("deliveries", 0)),
                    reason="max_deliveries_without_ack", published_at=original.time,
                )
                self._delete(settings.stream, work_seq)
                moved += 1
                logger.error("message dead-lettered after its last delivery went unanswered",
                             extra={"message_sid": message_id, "deliveries": event.get("deliveries")})
            self._delete(settings.dead_letter_stream, advisory_seq)
        return moved

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first (after a sweep, so none is missing)."""
        self.sweep_dead_letters()
        return [_dead_letter(seq, msg) for seq, msg in self._read_stream(
            self.settings.dead_letter_stream, self.settings.dead_subjects)]

    def dead_letter(self, dead_id: int) -> DeadLetter:
        try:
            msg = self._call(lambda c: c.js.get_msg(self.settings.dead_letter_stream, dead_id))
        except nats.js.errors.NotFoundError:
            raise DeadLetterNotFound(dead_id) from None
        if not msg.subject.startswith(f"{self.settings.subject_prefix}.dead."):
            raise DeadLetterNotFound(dead_id)
        return _dead_letter(dead_id, msg)

    def replay_dead_letter(self, dead_id: int) -> bool:
        """Queue a dead letter again as a new message (its own Nats-Msg-Id, ``<id>~replay~<dead id>``, so
        the duplicate window does not drop it) and remove it from the dead letters. True if queued now,
        False if this dead letter had been replayed already (an earlier replay stopped before removing it)."""
        letter = self.dead_letter(dead_id)
        headers = {MSG_ID_HEADER: f"{letter.message_id}~replay~{dead_id}", MESSAGE_ID_HEADER: letter.message_id}
        subject = self.settings.work_subject(letter.sender_key)
        ack = self._call(lambda c: c.js.publish(subject, letter.payload, headers=headers,
                                                timeout=self.settings.publish_timeout_s))
        self._delete(self.settings.dead_letter_stream, dead_id)
        logger.info("dead letter replayed", extra={"message_sid": letter.message_id, "dead_letter_id": dead_id})
        return not ack.duplicate

    def drop_dead_letter(self, dead_id: int) -> None:
        """Delete a dead letter for good."""
        letter = self.dead_letter(dead_id)
        self._delete(self.settings.dead_letter_stream, dead_id)
        logger.info("dead letter dropped", extra={"message_sid": letter.message_id, "dead_letter_id": dead_id})

    # --- life cycle ----------------------------------------------------------------------------------

    def ensure_topology(self) -> None:
        """Create or update the streams and the consumer (done on every connect; idempotent)."""
        self._connection()

    def close(self) -> None:
        """Close the connection and stop the loop (unacked deliveries go back to the stream). Idempotent."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_parents()
                return
            conn, loop = self._conn, self._loop
            self._conn = self._loop = None
        if loop is None:
            return
        if conn is not None:
            try:
                loop.run(conn.nc.close(), self.settings.request_timeout_s)
            except Exception as error:  # noqa: BLE001 - closing regardless
                logger.warning("closing the NATS connection failed", extra={"error": repr(error)})
        loop.stop()

    # --- internals -----------------------------------------------------------------------------------

    def _call(
        self, operation: Callable[[_Connection], Awaitable[T]], timeout_s: float | None = None, *,
        require_connected: bool = True,
    ) -> T:
        """Run ``operation(connection)`` on the loop and wait for it; connectivity failures (not
        connected, reconnecting, no answer within the timeout) become IntakeUnavailable."""
        timeout = self.settings.request_timeout_s if timeout_s is None else timeout_s
        conn, loop = self._connection()
        if require_connected and not conn.nc.is_connected:
            raise IntakeUnavailable("NATS connection is down (reconnecting)")

        async def bounded() -> T:
            return await asyncio.wait_for(operation(conn), timeout)

        try:
            return loop.run(bounded(), timeout + _LOOP_MARGIN_S)
        except _UNAVAILABLE as error:
            raise IntakeUnavailable(f"NATS did not answer: {type(error).__name__}: {error}") from error

    def _connection(self) -> tuple[_Connection, _EventLoopThread]:
        with self._lock:
            if self._pid != os.getpid():
                self._forget_parents()
            if self._loop is None:
                self._loop = _EventLoopThread()
            if self._conn is not None and not self._conn.nc.is_closed:
                return self._conn, self._loop
            if time.monotonic() < self._next_connect_at:
                raise IntakeUnavailable("NATS unreachable (last connect attempt failed moments ago)")
            budget = self.settings.connect_timeout_s * 2 + self.settings.request_timeout_s * 3
            try:
                self._conn = self._loop.run(self._open(), budget)
            except (*_UNAVAILABLE, nats.js.errors.Error) as error:
                self._next_connect_at = time.monotonic() + self.settings.reconnect_wait_s
                raise IntakeUnavailable(f"cannot connect to NATS at {self.settings.url}: {error!r}") from error
            return self._conn, self._loop

    def _forget_parents(self) -> None:
        """In a forked child: the parent's loop thread does not exist here and its socket is the parent's."""
        self._pid = os.getpid()
        self._loop = None
        self._conn = None
        self._fetch_lock = threading.Lock()
        self._next_connect_at = 0.0

    async def _open(self) -> _Connection:
        settings = self.settings
        servers = [url.strip() for url in settings.url.split(",") if url.strip()]

        async def on_disconnected() -> None:
            logger.warning("NATS disconnected; reconnecting", extra={"nats_url": settings.url})

        async def on_reconnected() -> None:
            logger.info("NATS reconnected", extra={"nats_url": settings.url})

        async def on_error(error: Exception) -> None:
            logger.warning("NATS connection error", extra={"error": repr(error)})

        nc = await nats.connect(
            servers, name=settings.client_name, connect_timeout=settings.connect_timeout_s,
            reconnect_time_wait=settings.reconnect_wait_s,
            # One try per server for the first connect, so a caller hears "unreachable" within its budget;
            # once connected, the configured reconnect policy (nats-py reads this option at each reconnect).
            max_reconnect_attempts=1,
            disconnected_cb=on_disconnected, reconnected_cb=on_reconnected, error_cb=on_error,
        )
        nc.options["max_reconnect_attempts"] = settings.max_reconnect_attempts
        js = nc.jetstream(timeout=settings.request_timeout_s)
        try:
            await _ensure_topology(js, settings)
            told = await _ensure_told_bucket(js, settings)
        except BaseException:
            await nc.close()
            raise
        logger.info("NATS connected", extra={"nats_url": settings.url, "stream": settings.stream})
        return _Connection(nc, js, told)

    def _copy_to_dead_letters(
        self, *, message_id: str, sender_key: str, payload: bytes, work_seq: int, deliveries: int, reason: str,
        published_at: datetime | None,
    ) -> int:
        headers = {
            # The same id from the worker and from the sweeper: one message is dead-lettered once.
            MSG_ID_HEADER: f"{message_id}~dead~{work_seq}",
            MESSAGE_ID_HEADER: message_id,
            DELIVERIES_HEADER: str(deliveries),
            REASON_HEADER: reason,
            WORK_SEQ_HEADER: str(work_seq),
        }
        if published_at is not None:
            headers[PUBLISHED_AT_HEADER] = published_at.isoformat()
        subject = self.settings.dead_subject(sender_key)
        ack = self._call(lambda c: c.js.publish(subject, payload, headers=headers,
                                                timeout=self.settings.publish_timeout_s))
        return int(ack.seq)

    def _read_stream(self, stream: str, subject: str) -> Iterator[tuple[int, object]]:
        """(sequence, message) for each message of ``stream`` on ``subject``, in order."""
        seq = 1
        while True:
            try:
                msg = self._call(lambda c, s=seq: c.js.get_msg(stream, s, subject=subject, next=True))
            except nats.js.errors.NotFoundError:
                return
            yield msg.seq, msg
            seq = msg.seq + 1

    def _delete(self, stream: str, seq: int) -> None:
        try:
            self._call(lambda c: c.js.delete_msg(stream, seq))
        except nats.js.errors.NotFoundError:
            pass  # already gone (a concurrent sweep, or an erasure): the goal is reached

    def _purge(self, stream: str, subject: str) -> int:
        # nats-py's purge_stream answers only True; the API's own answer says how many went.
        async def purge(conn: _Connection) -> int:
            reply = await conn.nc.request(f"$JS.API.STREAM.PURGE.{stream}", json.dumps({"filter": subject}).encode(),
                                          timeout=self.settings.request_timeout_s)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise nats.js.errors.APIError.from_error(answer["error"])
            return int(answer.get("purged", 0))

        return self._call(purge)


async def _ensure_topology(js: JetStreamContext, settings: JetStreamSettings) -> None:
    work = StreamConfig(
        name=settings.stream, subjects=[settings.work_subjects],
        # Work queue: a message is deleted once acked (or termed), and only one consumer may take it.
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE, num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
        description="mediabot: accepted webhooks waiting for a worker",
    )
    dead = StreamConfig(
        name=settings.dead_letter_stream, subjects=[settings.dead_subjects, settings.max_deliveries_advisory],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s, max_age=settings.dead_letter_max_age_s,
        description="mediabot: messages given up on, kept for replay; and the max-deliveries advisories",
    )
    for config in (work, dead):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as error:
            if error.err_code != 10058:  # "stream name already in use with a different configuration"
                raise
            await js.update_stream(config)
    # Create or update (the server applies changed ack wait, backoff and max deliver to the durable).
    await js.add_consumer(settings.stream, ConsumerConfig(
        durable_name=settings.consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s, backoff=list(settings.backoff_s) or None, max_deliver=settings.max_deliver,
        filter_subject=settings.work_subjects, description="mediabot workers (shared)",
    ))


async def _ensure_told_bucket(js: JetStreamContext, settings: JetStreamSettings) -> KeyValue:
    """Create the telling claims' bucket, or bring an existing one to the configured replicas and TTL."""
    config = KeyValueConfig(
        bucket=settings.told_bucket, history=1, ttl=settings.duplicate_window_s, storage=StorageType.FILE,
        replicas=settings.replicas,
        description="mediabot: whose outcome has been told (one empty key per message; see claim_telling)",
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as error:
        if error.err_code != 10058:  # "stream name already in use with a different configuration"
            raise
    info = await js.stream_info(f"KV_{settings.told_bucket}")
    stream = info.config
    stream.max_age, stream.num_replicas = settings.duplicate_window_s, settings.replicas
    await js.update_stream(stream)
    return await js.key_value(settings.told_bucket)


def _told_key(publish_id: str) -> str:
    """A KeyValue key for a publish id: ``~`` (a replay's ``<id>~replay~<n>``) is not allowed in keys."""
    key = publish_id.replace("~", ".")
    if not key or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise ValueError("publish_id must be letters, digits, '-', '_' or '~'")
    return key


async def _unsubscribe(conn: _Connection, sub: object) -> None:
    await sub.unsubscribe()  # type: ignore[attr-defined]
    if conn.nc.is_connected:
        # A round trip, so the server has dropped the interest before this returns: a worker offering
        # from here on hears "no responders" at once instead of waiting out its timeout.
        await conn.nc.flush()


def _dead_letter(seq: int, msg: object) -> DeadLetter:
    headers = getattr(msg, "headers", None) or {}
    published = headers.get(PUBLISHED_AT_HEADER)
    return DeadLetter(
        id=seq,
        message_id=headers.get(MESSAGE_ID_HEADER, ""),
        sender_key=msg.subject.rsplit(".", 1)[-1],  # type: ignore[attr-defined]
        deliveries=int(headers.get(DELIVERIES_HEADER) or 0),
        reason=headers.get(REASON_HEADER, ""),
        dead_at=msg.time or datetime.now(UTC),  # type: ignore[attr-defined]
        published_at=datetime.fromisoformat(published) if published else None,
        payload=msg.data,  # type: ignore[attr-defined]
    )


def _token(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} must be 1-128 letters, digits, '-' or '_'")
    return value
