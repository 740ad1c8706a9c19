"""INTAKE=jetstream through the real path: the real app (create_app, signed webhooks), a real nats-server
(tests/fixtures/nats.py), the real audio service, the vision service on a real Triton, and the JetStream
worker loop (gateway.intake.jetstream_worker) on its own connection, as a worker process has."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from flask import Flask

from bench.nats_server import NatsServer
from bench.photo_set import face_photo
from gateway import replies
from gateway.audio_client import AudioClient
from gateway.intake import ItemAnswer
from gateway.intake.jetstream import Delivery, IntakeUnavailable, JetStreamQueue
from gateway.intake.jetstream_intake import JetStreamIntake, jetstream_settings
from gateway.intake.jetstream_worker import Handled, JetStreamWorker
from gateway.intake.spool import Backoff
from gateway.message import InboundMessage
from gateway.outcome import Outcome
from gateway.processing import MediaProcessor
from tests.fixtures.gateway import MediaServer, closed_port_addr, media_files, media_form, reply_of, signed_post


@dataclass
class Told:
    """The ``tell`` recorder: what the worker told users itself (no webhook took the outcome)."""

    calls: list[tuple[str, list[ItemAnswer]]] = field(default_factory=list)

    def __call__(self, message: InboundMessage, answers: list[ItemAnswer]) -> bool:
        self.calls.append((message.message_sid, list(answers)))
        return True

    def of(self, message_sid: str) -> list[list[ItemAnswer]]:
        return [answers for sid, answers in self.calls if sid == message_sid]


@dataclass
class Workers:
    """Starts JetStream workers in threads (each with its own queue connection); all stopped at teardown."""

    app: Flask
    told: Told = field(default_factory=Told)
    beats: list[float] = field(default_factory=list)
    _running: list[tuple[threading.Event, threading.Thread, JetStreamQueue]] = field(default_factory=list)
    _queues: list[JetStreamQueue] = field(default_factory=list)

    def start(self, audio_addr: str | None = None, *, concurrency: int = 1, **make: object) -> JetStreamWorker:
        worker = self.make(audio_addr, **make)  # type: ignore[arg-type]
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop, concurrency), daemon=True)
        thread.start()
        self._running.append((stop, thread, worker._queue))  # noqa: SLF001
        return worker

    def make(self, audio_addr: str | None = None, *, tell: Callable[..., bool] | None = None,
             wrap: Callable[[MediaProcessor], MediaProcessor] | None = None) -> JetStreamWorker:
        """A worker on its own connection, not started (``start`` runs one); ``tell`` instead of the
        recorder, ``wrap`` around the real processor. Its connection is closed at teardown."""
        services = self.app.extensions["mediabot"]
        settings = services.settings
        processor: MediaProcessor = services.processor
        if audio_addr is not None:  # the audio service as it is now, not as the app was made
            processor = MediaProcessor(
                downloader=services.downloader, store=services.store,
                audio=AudioClient(grpc.insecure_channel(audio_addr)), vision=processor._vision,  # noqa: SLF001
                audio_timeout_s=10, vision_timeout_s=10, max_media_bytes=settings.max_media_bytes,
            )
        queue = JetStreamQueue(jetstream_settings(settings))
        self._queues.append(queue)
        return JetStreamWorker(
            queue, processor if wrap is None else wrap(processor),
            backoff=Backoff(settings.spool_retry_base_s, settings.spool_retry_max_s),
            attempt_budget_s=20, tell=tell or self.told, heartbeat=lambda: self.beats.append(time.monotonic()),
            fetch_timeout_s=0.2, dead_letter_sweep_s=0.5,
        )

    def stop_all(self) -> None:
        for stop, thread, _queue in self._running:
            stop.set()
            thread.join(30)
            assert not thread.is_alive(), "a worker did not stop"
        self._running.clear()
        for queue in self._queues:
            queue.close()
        self._queues.clear()


@pytest.fixture
def jetstream_app(make_gateway: Callable[..., Flask], nats_server: NatsServer, audio_server: str,
                  vision_server: str) -> Callable[..., Flask]:
    """``jetstream_app(**env) -> Flask``: the gateway on INTAKE=jetstream, real audio and vision services."""

    def make(**overrides: object) -> Flask:
        env: dict[str, object] = {
            "INTAKE": "jetstream", "NATS_URL": nats_server.url, "NATS_ACK_WAIT_S": "3",
            "INTAKE_MAX_ATTEMPTS": "3", "SPOOL_RETRY_BASE_S": "0.2", "SPOOL_RETRY_MAX_S": "0.4",
            "WEBHOOK_BUDGET_S": "10", "AUDIO_SERVICE_ADDR": audio_server, "VISION_SERVICE_ADDR": vision_server,
        }
        env.update(overrides)
        return make_gateway(**env)

    return make


@pytest.fixture
def workers_for() -> Iterator[Callable[[Flask], Workers]]:
    made: list[Workers] = []

    def make(app: Flask) -> Workers:
        made.append(Workers(app))
        return made[-1]

    yield make
    for workers in made:
        workers.stop_all()


@pytest.fixture
def media(media_server: MediaServer, voice_note: Path) -> tuple[str, str]:
    """(voice note URL, face photo URL) on the local media host."""
    return (media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg"),
            media_server.add("/media/face", body=face_photo(), content_type="image/jpeg"))


def intake_of(app: Flask) -> JetStreamIntake:
    intake = app.extensions["mediabot"].intake
    assert isinstance(intake, JetStreamIntake)
    return intake


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class AfterProcessing:
    """The real processor, then ``then()`` after an item is done: a fault at a chosen moment."""

    def __init__(self, real: MediaProcessor, then: Callable[[], object]) -> None:
        self._real, self._then = real, then

    def process(self, *args: object, **kwargs: object) -> object:
        result = self._real.process(*args, **kwargs)  # type: ignore[arg-type]
        self._then()
        return result


def deferred_message(app: Flask, media: tuple[str, str]) -> dict[str, str]:
    """A one-photo message the webhook defers (no worker yet): its outcome must be told later."""
    form = media_form([(media[1], "image/jpeg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_PHOTO
    return form


def drained(app: Flask) -> bool:
    try:
        return intake_of(app).depth() == 0
    except IntakeUnavailable:  # NATS restarting
        return False


def kinds(media_root: Path) -> list[str]:
    """The folder (audio / images) of every stored media file, sorted."""
    return sorted(path.parent.name for path in media_files(media_root) if path.suffix != ".json")


def test_a_quick_worker_answers_through_the_webhook(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path,
) -> None:
    app = jetstream_app()
    workers = workers_for(app)
    workers.start()
    voice, face = media
    form = media_form([(voice, "audio/ogg"), (face, "image/jpeg")])
    text = reply_of(signed_post(app.test_client(), form))
    first, second = text.split("\n")
    assert first.startswith("1. Saved your voice message (") and second == f"2. {replies.saved_photo(1)}", text
    assert kinds(media_root) == ["audio", "images"]
    assert workers.told.calls == []  # the webhook took the outcome: the worker told nobody itself
    # The worker acks right after handing the outcome over, so the webhook may answer a moment before.
    wait_for(lambda: drained(app), 10, "the ack")
    assert workers.beats


class InFlight:
    """The real processor, counting items in its hands at once; each item waits (up to 10 s) until a second
    is in hand too, so one worker taking two messages at once shows as ``most == 2``, one at a time as 1."""

    def __init__(self, real: MediaProcessor) -> None:
        self._real = real
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0
        self._two = threading.Event()

    def process(self, *args: object, **kwargs: object) -> object:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
            if self._now >= 2:
                self._two.set()
        try:
            self._two.wait(10)
            return self._real.process(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with self._lock:
                self._now -= 1


def test_one_worker_handles_several_messages_at_once(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path,
) -> None:
    """WORKER_CONCURRENCY: two queued voice notes are in one worker's hands at the same time, and each is
    stored and told once."""
    app = jetstream_app(WEBHOOK_BUDGET_S="1")
    forms = [media_form([(media[0], "audio/ogg")]) for _ in range(2)]
    for form in forms:  # no worker yet: both webhooks defer
        assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    workers = workers_for(app)
    in_flight: list[InFlight] = []
    workers.start(concurrency=2, wrap=lambda real: in_flight.append(InFlight(real)) or in_flight[-1])
    wait_for(lambda: all(workers.told.of(form["MessageSid"]) for form in forms), 30, "both outcomes")
    assert in_flight[0].most == 2, "the worker took the second message only after the first"
    assert [len(workers.told.of(form["MessageSid"])) for form in forms] == [1, 1]
    assert kinds(media_root) == ["audio", "audio"]
    wait_for(lambda: drained(app), 10, "the acks")  # each right after its outcome was told


def test_without_a_quick_worker_the_webhook_defers_and_the_worker_tells_later(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path,
) -> None:
    app = jetstream_app(WEBHOOK_BUDGET_S="2")
    voice, face = media
    form = media_form([(voice, "audio/ogg"), (face, "image/jpeg")])
    started = time.monotonic()
    text = reply_of(signed_post(app.test_client(), form))  # no worker is running yet
    assert time.monotonic() - started < 2 + 2.0  # its budget, and room for a loaded machine (Twilio waits 15 s)
    assert text == f"1. {replies.RECEIVED_VOICE}\n2. {replies.RECEIVED_PHOTO}"
    assert media_files(media_root) == [] and intake_of(app).depth() == 1

    workers = workers_for(app)
    workers.start()
    wait_for(lambda: workers.told.of(form["MessageSid"]) != [], 60, "the worker to tell the outcome")
    [answers] = workers.told.of(form["MessageSid"])
    assert [a.outcome for a in answers] == [Outcome.SAVED, Outcome.SAVED]
    assert answers[1].sentence == replies.saved_photo(1)
    assert kinds(media_root) == ["audio", "images"]
    wait_for(lambda: intake_of(app).depth() == 0, 10, "the ack")


def test_an_outcome_whose_ack_was_lost_to_a_nats_crash_is_told_once(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """NATS dies between the tell and the ack: the message comes back, is done again (found stored), and
    its second delivery finds the first one's claim: the user hears once."""
    caplog.set_level(logging.INFO, logger="gateway.intake.jetstream_worker")
    app = jetstream_app(WEBHOOK_BUDGET_S="1.5")
    form = deferred_message(app, media)
    workers = workers_for(app)

    def tell_then_crash_nats(message: InboundMessage, answers: list[ItemAnswer]) -> bool:
        workers.told(message, answers)
        if len(workers.told.calls) == 1:
            nats_server.kill()
            # Until the client has seen it: the ack that follows then fails at once, and is not buffered
            # and resent after the reconnect (which would make it land after all: no redelivery).
            wait_for(lambda: not worker._queue._conn.nc.is_connected, 10, "the client to notice")  # noqa: SLF001
        return True

    worker = workers.start(tell=tell_then_crash_nats)
    wait_for(lambda: workers.told.calls != [], 60, "the first tell")
    time.sleep(0.5)
    nats_server.start()
    wait_for(lambda: "outcome told already" in caplog.text, 30, "the redelivery")
    wait_for(lambda: drained(app), 30, "the second delivery's ack")
    assert len(workers.told.of(form["MessageSid"])) == 1
    assert kinds(media_root) == ["images"]


def test_two_workers_holding_the_same_message_tell_it_once(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path,
) -> None:
    """A delivery outlives its ack wait (a stalled worker) and goes to a second worker; both finish it at
    the same moment: one claim, one tell."""
    app = jetstream_app(WEBHOOK_BUDGET_S="1.5")
    form = deferred_message(app, media)
    workers = workers_for(app)
    first, second = workers.make(), workers.make()
    [held] = first._queue.fetch(timeout_s=10)  # noqa: SLF001
    [again] = second._queue.fetch(timeout_s=15)  # noqa: SLF001 - after the ack wait (3 s)
    assert (held.message_id, again.message_id, again.number) == (form["MessageSid"], form["MessageSid"], 2)
    barrier = threading.Barrier(2)

    def finish(worker: JetStreamWorker, delivery: Delivery) -> Handled:
        barrier.wait()
        return worker.handle(delivery)

    with ThreadPoolExecutor(2) as pool:
        handled = list(pool.map(finish, (first, second), (held, again)))
    assert sorted(h.told_by for h in handled) == ["already", "tell"], handled
    assert len(workers.told.of(form["MessageSid"])) == 1
    assert kinds(media_root) == ["images"]
    wait_for(lambda: drained(app), 30, "the ack")


@pytest.mark.parametrize("down_s", [1.0, 6.0], ids=["blip", "longer-than-the-ack-wait"])
def test_nats_down_when_the_outcome_is_claimed_tells_it_once_after_nats_returns(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path, nats_server: NatsServer, down_s: float,
) -> None:
    app = jetstream_app(WEBHOOK_BUDGET_S="1.5")
    form = deferred_message(app, media)
    workers = workers_for(app)
    crashed = threading.Event()

    def crash_nats_once() -> None:
        if not crashed.is_set():
            crashed.set()
            nats_server.kill()  # the item is stored; the claim to tell it comes next

    for _ in range(2):
        workers.start(wrap=lambda real: AfterProcessing(real, crash_nats_once))  # type: ignore[arg-type,return-value]
    assert crashed.wait(60)
    time.sleep(down_s)
    assert workers.told.calls == [], "told without a claim while NATS was down"
    nats_server.start()
    wait_for(lambda: workers.told.calls != [], 60, "the tell once NATS is back")
    wait_for(lambda: drained(app), 30, "the ack")
    time.sleep(1.0)  # a second tell, if any, would come now
    [answers] = workers.told.of(form["MessageSid"])
    # Told by the first worker, or by the second if the delivery went to it (found stored: same sentence).
    assert [a.sentence for a in answers] == [replies.saved_photo(1)]
    assert answers[0].outcome in (Outcome.SAVED, Outcome.ALREADY_SAVED)
    assert kinds(media_root) == ["images"]


def test_a_webhook_replayed_three_times_and_after_it_completed_is_stored_once(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path,
) -> None:
    app = jetstream_app()
    workers_for(app).start()
    form = media_form([(media[1], "image/jpeg")])
    barrier = threading.Barrier(3)

    def deliver() -> str:
        barrier.wait()
        return reply_of(signed_post(app.test_client(), form))

    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda _: deliver(), range(3)))
    assert set(texts) <= {replies.saved_photo(1), replies.RECEIVED_PHOTO}, texts
    assert replies.saved_photo(1) in texts
    wait_for(lambda: intake_of(app).depth() == 0, 30, "the queue to drain")
    # Once more, after it completed (inside the duplicate window): found, not stored again.
    assert reply_of(signed_post(app.test_client(), form)) == replies.saved_photo(1)
    assert kinds(media_root) == ["images"]


def test_a_poison_item_gets_a_final_reply_after_the_cap_and_is_a_dead_letter_that_replays(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path, audio_server: str,
) -> None:
    # The audio service the app (and so its worker's processor) dials fails every call.
    app = jetstream_app(AUDIO_SERVICE_ADDR=closed_port_addr(), WEBHOOK_BUDGET_S="3")
    workers = workers_for(app)
    workers.start()
    form = media_form([(media[0], "audio/ogg"), (media[1], "image/jpeg")])
    text = reply_of(signed_post(app.test_client(), form))
    # The first attempt's deferral reached the waiting webhook: "shortly" for the voice note, the photo's outcome.
    assert text == f"1. {replies.RECEIVED_VOICE}\n2. {replies.saved_photo(1)}"
    wait_for(lambda: workers.told.of(form["MessageSid"]) != [], 30, "the give-up answer")
    [answers] = workers.told.of(form["MessageSid"])
    assert [(a.sentence, a.deferred) for a in answers] == [
        (replies.GAVE_UP_VOICE, False), (replies.saved_photo(1), False)]
    assert [a.outcome for a in answers] == [Outcome.GAVE_UP, Outcome.ALREADY_SAVED]
    queue = intake_of(app).queue
    [letter] = queue.dead_letters()
    assert (letter.message_id, letter.deliveries, letter.reason) == (form["MessageSid"], 3, "unavailable")
    assert queue.depth() == 0 and kinds(media_root) == ["images"]

    # The audio service is back: an operator replays the dead letter, a worker finishes it, the photo once.
    workers.stop_all()
    workers.start(audio_addr=audio_server)
    assert queue.replay_dead_letter(letter.id) is True
    wait_for(lambda: len(workers.told.of(form["MessageSid"])) == 2, 30, "the replay's outcome")
    assert [a.outcome for a in workers.told.of(form["MessageSid"])[1]] == [Outcome.SAVED, Outcome.ALREADY_SAVED]
    assert queue.dead_letters() == [] and kinds(media_root) == ["audio", "images"]


def test_nats_killed_and_restarted_mid_run_loses_nothing(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media: tuple[str, str],
    media_root: Path, nats_server: NatsServer,
) -> None:
    app = jetstream_app(WEBHOOK_BUDGET_S="4")
    workers = workers_for(app)
    workers.start()
    forms = [media_form([(media[0], "audio/ogg")]) for _ in range(12)]
    texts: list[str] = []

    def send(form: dict[str, str]) -> None:
        texts.append(reply_of(signed_post(app.test_client(), form)))

    for n, form in enumerate(forms):
        if n == 4:
            nats_server.kill()  # kill -9: whatever was in flight is cut
        if n == 8:
            nats_server.start()  # same port, same store
        send(form)
    # Every webhook was answered: saved (through the worker, or processed inline while NATS was down) or
    # "shortly" (queued, the worker finishes it). Nothing is "please send it again".
    assert all(t.startswith("Saved your voice message (") or t == replies.RECEIVED_VOICE for t in texts), texts
    wait_for(lambda: len(kinds(media_root)) >= len(forms), 90, "every voice note stored")
    wait_for(lambda: intake_of(app).depth() == 0, 30, "the queue to drain")
    stored = sorted(path.name.split("_")[1] for path in media_files(media_root) if path.suffix == ".wav")
    assert stored == sorted(form["MessageSid"] for form in forms)


def test_erasure_purges_the_senders_queued_messages(
    jetstream_app: Callable[..., Flask], media: tuple[str, str],
) -> None:
    app = jetstream_app(WEBHOOK_BUDGET_S="1.5")  # no worker: the messages stay queued
    client = app.test_client()
    reply_of(signed_post(client, media_form([(media[1], "image/jpeg")], from_number="+15550001111")))
    reply_of(signed_post(client, media_form([(media[1], "image/jpeg")], from_number="+15550002222")))
    intake = intake_of(app)
    assert intake.depth() == 2
    assert intake.forget_sender("15550001111") == 1
    assert intake.depth() == 1
    # Subjects carry the sender's keyed hash, never the number.
    [(subject, _)] = [(s, n) for s, n in _subjects(intake).items()]
    assert "15550002222" not in subject and subject.endswith(intake.sender_key("15550002222"))


def _subjects(intake: JetStreamIntake) -> dict[str, int]:
    import asyncio

    import nats

    async def ask() -> dict[str, int]:
        nc = await nats.connect(intake.queue.settings.url)
        try:
            info = await nc.jetstream().stream_info(intake.queue.settings.stream, subjects_filter=">")
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_a_long_attempt_signals_progress_and_is_not_handed_to_a_second_worker(
    jetstream_app: Callable[..., Flask], workers_for: Callable[[Flask], Workers], media_server: MediaServer,
    voice_note: Path, media_root: Path,
) -> None:
    from tests.fixtures.gateway import Route

    # The ack wait is 1 s; the media host takes 3 s: only the worker's in_progress keeps the delivery its own.
    app = jetstream_app(NATS_ACK_WAIT_S="1", WEBHOOK_BUDGET_S="2")
    route = Route(body=voice_note.read_bytes(), content_type="audio/ogg", delay_s=3.0)
    url = media_server.add("/media/slow-voice", route)
    workers = workers_for(app)
    workers.start()
    workers.start()
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    wait_for(lambda: workers.told.of(form["MessageSid"]) != [], 30, "the outcome")
    time.sleep(2)  # a second delivery, had there been one, would be under way by now
    assert route.hits == 1 and len(workers.told.of(form["MessageSid"])) == 1
    assert kinds(media_root) == ["audio"]
    wait_for(lambda: drained(app), 10, "the ack")  # right after the outcome was told
