"""Nothing lost, nothing twice: messages streamed through the simulator while the parts of the system fail.

Real processes on loopback: Triton, the audio and vision services, the gateway under gunicorn (2 workers)
and its worker, storing to SeaweedFS over the S3 API; every test runs on both intakes, the spool and
JetStream (a real nats-server, which the faults test also kills -9 and restarts mid-run). Each message is delivered as Twilio does it,
and redelivered with the same MessageSid when the gateway could not be reached (Twilio's retry on a
connection failure), so a crash of the gateway loses nothing the sender did not get an answer for.

Afterwards every item that qualifies (voice notes, photos with a face) is stored exactly once, with the
photo's bytes unchanged; nothing else is stored; the intake is empty, nothing given up; and no process was restarted by
anyone but the test's own fault script. Every user whose reply said "I'll ... shortly" was told the outcome
once, through Twilio's Messages API (tests.fixtures.twilio_api, TWILIO_API_BASE_URL), and nobody whose reply
was final was told anything; when the gateway and worker are killed -9 mid-run, at least once (a spool worker
killed between the send and its ``told`` line sends again: counted, expected 0).

Size: SOAK_MESSAGES messages (default 30, `make soak` 300), one every SOAK_INTERVAL_S (0.3) at up to 8 in
flight, with the S3 server down for SOAK_S3_DOWN_S (default 8, `make soak` 20). With SOAK_REPORT=path the
figures (time, retries, webhook latency percentiles, deferred / told / told twice) are written there as
JSON as well as logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from bench.nats_server import NatsServer
from bench.photo_set import face_photo, no_face_photo
from gateway import replies
from gateway.whatsapp.simulate import DEFAULT_TO, MediaHost, send, serve_media, serving_in_thread
from gateway.intake.jetstream import IntakeUnavailable, JetStreamQueue
from gateway.intake.spool import Spool
from gateway.storage.keys import AUDIO, IMAGES, is_media_key, parse_key
from tests.fixtures.gateway import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN
from tests.fixtures.twilio_api import TwilioMessagesApi
from tests.fixtures.s3 import SeaweedS3, new_bucket_name
from tests.reliability.stack import (
    Figures,
    Proc,
    audio_proc,
    count_logged,
    free_port,
    gateway_env,
    gateway_procs,
    jetstream_env,
    vision_proc,
)

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

MESSAGES = int(os.environ.get("SOAK_MESSAGES", "30"))
INTERVAL_S = float(os.environ.get("SOAK_INTERVAL_S", "0.3"))
S3_DOWN_S = float(os.environ.get("SOAK_S3_DOWN_S", "8"))
CONCURRENCY = 8
# How long the spool may take to drain once the last fault is over (Triton's reload included).
DRAIN_TIMEOUT_S = 240.0
# What each worker logs for an attempt that left something to retry.
RETRIED = ("spooled message will be retried", "queued message will be retried")
INTAKES = ("spool", "jetstream")


class Backlog:
    """What the intake still owes (``depth``) and what it gave up on, whichever intake it is."""

    def __init__(self, spool: Spool | None = None, queue: JetStreamQueue | None = None) -> None:
        self.spool, self.queue = spool, queue

    def depth(self) -> int:
        if self.spool is not None:
            return self.spool.depth()
        try:
            return self.queue.depth()  # type: ignore[union-attr]
        except IntakeUnavailable:
            return -1  # NATS not back yet: not drained

    def given_up(self) -> list[object]:
        if self.spool is not None:
            return list(self.spool.failed())
        return list(self.queue.dead_letters())  # type: ignore[union-attr]


@dataclass(frozen=True)
class Planned:
    """One message: its files (path, declared type) and which of its items must end up stored."""

    message_sid: str
    sender: str
    files: tuple[tuple[Path, str], ...]
    # index -> kind (AUDIO / IMAGES) for the items that qualify.
    expected: dict[int, str]


@dataclass
class Media:
    voice: Path
    face: Path
    no_face: Path
    video: Path

    def plan(self, n: int) -> list[Planned]:
        from gateway.whatsapp.simulate import new_sid

        shapes: list[tuple[tuple[tuple[Path, str], ...], dict[int, str]]] = [
            (((self.voice, "audio/ogg"),), {0: AUDIO}),
            (((self.face, "image/jpeg"),), {0: IMAGES}),
            (((self.no_face, "image/png"),), {}),
            (((self.voice, "audio/ogg"), (self.face, "image/jpeg")), {0: AUDIO, 1: IMAGES}),
            (((self.face, "image/jpeg"), (self.video, "video/mp4")), {0: IMAGES}),
        ]
        planned = []
        for i in range(n):
            files, expected = shapes[i % len(shapes)]
            # A number of its own: the told answers are found by the user's address.
            planned.append(Planned(new_sid("MM"), f"+1555{2_000_000 + i:07d}", files, expected))
        return planned


@dataclass
class Gateway:
    gunicorn: Proc
    worker: Proc
    backlog: Backlog
    bucket: str
    url: str
    logs: list[Path] = field(default_factory=list)
    intake: str = "spool"
    nats: NatsServer | None = None
    # Twilio's Messages API, where the worker tells deferred WhatsApp answers.
    twilio_api: TwilioMessagesApi | None = None

    def tail(self) -> str:
        return self.gunicorn.tail() + "\n" + self.worker.tail()


@dataclass
class Services:
    audio: Proc
    vision: Proc


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, voice_note: Path) -> Media:
    directory = tmp_path_factory.mktemp("soak_media")
    face, no_face, video = directory / "face.jpg", directory / "no_face.png", directory / "clip.mp4"
    face.write_bytes(face_photo())
    no_face.write_bytes(no_face_photo())
    video.write_bytes(b"\0\0\0\x18ftypmp42" + b"\0" * 64)  # declared video/mp4: refused unread
    return Media(voice_note, face, no_face, video)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, triton_server) -> Iterator[Services]:  # noqa: ANN001
    tmp = tmp_path_factory.mktemp("soak_services")
    triton_server.start()
    audio, vision = audio_proc(tmp), vision_proc(tmp, triton_server.grpc_url)
    try:
        audio.start()
        vision.start()
        yield Services(audio, vision)
    finally:
        for proc in (vision, audio):
            proc.stop()
        triton_server.start()  # a fault script that failed half-way must not leave it down for others


@pytest.fixture(params=INTAKES)
def gateway(request: pytest.FixtureRequest, tmp_path: Path, services: Services, running_s3: SeaweedS3
            ) -> Iterator[Gateway]:
    intake: str = request.param
    port = free_port()
    bucket = new_bucket_name()
    twilio_api = TwilioMessagesApi(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN)
    env = gateway_env(
        audio_addr=services.audio.env["AUDIO_LISTEN"], vision_addr=services.vision.env["VISION_LISTEN"],
        s3_env=running_s3.gateway_env(bucket), spool_dir=tmp_path / "spool", port=port,
        twilio_api_base_url=twilio_api.base_url,
    )
    nats, queue = None, None
    if intake == "jetstream":
        nats = NatsServer(root=tmp_path / "nats")
        nats.start()
        env.update(jetstream_env(nats.url))
        from gateway.config import Settings
        from gateway.intake.jetstream_intake import jetstream_settings

        queue = JetStreamQueue(jetstream_settings(Settings.from_env(env)))
    backlog = Backlog(spool=Spool(tmp_path / "spool")) if queue is None else Backlog(queue=queue)
    gunicorn, worker = gateway_procs(tmp_path, env)
    try:
        with serving_in_thread(twilio_api, "soak-twilio-api"):
            gunicorn.start()
            worker.start()
            yield Gateway(gunicorn, worker, backlog, bucket, f"http://127.0.0.1:{port}/whatsapp",
                          [gunicorn.log, worker.log], intake, nats, twilio_api)
    finally:
        worker.stop()
        gunicorn.stop()
        if queue is not None:
            queue.close()
        if nats is not None:
            nats.stop()


# -- the run ----------------------------------------------------------------------------------------------


def deliver(gateway: Gateway, host: MediaHost, message: Planned, figures: Figures, lock: threading.Lock,
            give_up_at: float) -> None:
    """Deliver one message until the gateway answers 200, redelivering (same MessageSid) like Twilio."""
    while True:
        try:
            result = send(
                [path for path, _ in message.files], content_types=[ct for _, ct in message.files],
                from_number=message.sender, url=gateway.url, account_sid=TEST_ACCOUNT_SID,
                auth_token=TEST_AUTH_TOKEN, message_sid=message.message_sid, media_host=host, timeout_s=20,
            )
        except requests.RequestException:
            result = None
        if result is not None and result.status == 200:
            with lock:
                figures.latencies_s.append(result.elapsed_s)
                figures.replies[message.message_sid] = result.reply_text
            return
        with lock:
            figures.redeliveries += 1
            if result is not None and result.status >= 500:
                figures.server_errors += 1
        if time.monotonic() > give_up_at:
            raise AssertionError(f"{message.message_sid} was never answered with 200")
        time.sleep(0.5)


def stream(gateway: Gateway, messages: list[Planned], faults: Callable[[float], None]) -> Figures:
    """Send ``messages`` paced over a window while ``faults(window_s)`` runs beside them.

    The faults run in this (the main) thread: Triton is started with PR_SET_PDEATHSIG, which fires when
    the *thread* that started it ends, so a Triton restarted from a short-lived thread would die with it.
    """
    figures, lock = Figures(), threading.Lock()
    window_s = len(messages) * INTERVAL_S
    errors: list[BaseException] = []

    with serve_media(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN) as host:
        give_up_at = time.monotonic() + window_s + DRAIN_TIMEOUT_S

        def send_all() -> None:
            try:
                with ThreadPoolExecutor(CONCURRENCY) as pool:
                    futures = []
                    for message in messages:
                        futures.append(pool.submit(deliver, gateway, host, message, figures, lock, give_up_at))
                        time.sleep(INTERVAL_S)
                    for future in futures:
                        future.result()
            except BaseException as error:  # reported by the test, not lost in a thread
                errors.append(error)

        sender = threading.Thread(target=send_all, name="sender")
        sender.start()
        try:
            faults(window_s)
        finally:
            sender.join()
        if errors:
            raise errors[0]
        wait_until_drained(gateway)
    return figures


def wait_until_drained(gateway: Gateway) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while gateway.backlog.depth() != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the intake still holds {gateway.backlog.depth()} messages\n{gateway.tail()}")
        assert gateway.gunicorn.alive and gateway.worker.alive, gateway.tail()
        time.sleep(0.5)


def assert_stored_exactly_once(s3: SeaweedS3, gateway: Gateway, messages: list[Planned], media: Media) -> int:
    """Every qualifying item once, nothing else; photos byte-identical to what was sent. Returns the count."""
    client = s3.client()
    found: Counter[tuple[str, int]] = Counter()
    keys: dict[tuple[str, int], tuple[str, str]] = {}
    for obj in client.list_objects(gateway.bucket, prefix="whatsapp/", recursive=True):
        name = obj.object_name or ""
        if is_media_key(name):
            ref, _ = parse_key(name)
            found[(ref.message_sid, ref.index)] += 1
            keys[(ref.message_sid, ref.index)] = (ref.kind, name)
    expected = {(m.message_sid, i): kind for m in messages for i, kind in m.expected.items()}
    assert set(found) == set(expected), (
        f"missing {sorted(set(expected) - set(found))[:5]}, unexpected {sorted(set(found) - set(expected))[:5]}"
    )
    assert [item for item, count in found.items() if count != 1] == []
    face_sha = hashlib.sha256(media.face.read_bytes()).hexdigest()
    for item, kind in expected.items():
        assert keys[item][0] == kind
        response = client.get_object(gateway.bucket, keys[item][1])
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        if kind == IMAGES:
            assert hashlib.sha256(data).hexdigest() == face_sha, keys[item][1]
        else:
            assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", keys[item][1]
    return len(expected)


@dataclass
class Telling:
    """Who was told what after the run, per message (by the user's WhatsApp address)."""

    deferred: list[str]  # MessageSids whose reply said "shortly"
    told: dict[str, int]  # MessageSid -> answers the Twilio API received for its user
    wrong: list[str]  # what a told answer got wrong (sender, or a sentence that is not the outcome)

    @property
    def figures(self) -> dict[str, int]:
        deferred = set(self.deferred)
        return {
            "deferred": len(deferred),
            "told": sum(1 for sid in deferred if self.told.get(sid, 0) >= 1),
            "told_twice": sum(1 for sid in deferred if self.told.get(sid, 0) > 1),
            "told_not_deferred": sum(1 for sid, n in self.told.items() if n and sid not in deferred),
        }


_SHORTLY = (replies.RECEIVED_VOICE, replies.RECEIVED_PHOTO, replies.RECEIVED_OTHER)


def _sentences(text: str) -> list[str]:
    """The sentences of a reply or a told answer (``replies.combine``: numbered when several)."""
    lines = text.split("\n")
    if len(lines) == 1:
        return lines
    return [line.split(". ", 1)[1] if line.split(". ", 1)[0].isdigit() else line for line in lines]


def _final_sentence_fits(sentence: str, kind: str | None) -> bool:
    """Whether ``sentence`` is a final answer for an item expected to end as ``kind`` (None: not stored,
    i.e. a photo without a face, or the clip no one keeps: on JetStream a webhook that waited in vain says
    "shortly" for every item, the unsupported one included)."""
    if kind == AUDIO:
        return sentence.startswith("Saved your voice message (")
    if kind == IMAGES:
        return sentence.startswith("Saved your photo (")
    return sentence in (replies.NO_FACE, replies.unsupported("videos"))


def telling(gateway: Gateway, messages: list[Planned], figures: Figures) -> Telling:
    """Match what Twilio's Messages API received against each message's reply."""
    assert gateway.twilio_api is not None
    by_user: dict[str, list[object]] = {}
    for sent in list(gateway.twilio_api.sent):
        by_user.setdefault(sent.to, []).append(sent)
    deferred, told, wrong = [], {}, []
    for message in messages:
        reply = _sentences(figures.replies.get(message.message_sid, ""))
        waiting = [i for i, sentence in enumerate(reply) if sentence in _SHORTLY]
        if waiting:
            deferred.append(message.message_sid)
        answers = by_user.get(f"whatsapp:{message.sender}", [])
        told[message.message_sid] = len(answers)
        for answer in answers:
            if answer.from_ != DEFAULT_TO:  # type: ignore[attr-defined]
                wrong.append(f"{message.message_sid}: from {answer.from_!r}")  # type: ignore[attr-defined]
            sentences = _sentences(answer.body)  # type: ignore[attr-defined]
            if any(sentence in _SHORTLY for sentence in sentences):
                wrong.append(f"{message.message_sid}: told 'shortly' again: {answer.body!r}")  # type: ignore[attr-defined]
            for index in waiting:
                if not any(_final_sentence_fits(s, message.expected.get(index)) for s in sentences):
                    wrong.append(f"{message.message_sid}: item {index} not in {answer.body!r}")  # type: ignore[attr-defined]
    return Telling(deferred, told, wrong)


def report(name: str, gateway: Gateway, messages: list[Planned], figures: Figures, elapsed_s: float,
           stored: int, told: Telling | None = None) -> dict[str, object]:
    figures_out = {
        "test": name,
        "messages": len(messages),
        "items_stored": stored,
        "seconds": round(elapsed_s, 1),
        "intake": gateway.intake,
        "retries": sum(count_logged(gateway.logs, message) for message in RETRIED),
        "redeliveries": figures.redeliveries,
        "server_errors": figures.server_errors,
        "webhook_p50_s": round(figures.percentile(50), 3),
        "webhook_p99_s": round(figures.percentile(99), 3),
        "webhook_max_s": round(max(figures.latencies_s, default=0.0), 3),
        **(told.figures if told is not None else {}),
    }
    logger.warning("soak figures %s", json.dumps(figures_out))
    path = os.environ.get("SOAK_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(figures_out) + "\n")
    return figures_out


def at(fraction: float, window_s: float, started: float) -> None:
    """Sleep until ``fraction`` of the sending window has passed."""
    time.sleep(max(0.0, started + fraction * window_s - time.monotonic()))


# -- the tests --------------------------------------------------------------------------------------------


def test_faults_lose_nothing_and_store_nothing_twice(
    gateway: Gateway, services: Services, running_s3: SeaweedS3, triton_server, media: Media  # noqa: ANN001
) -> None:
    messages = media.plan(MESSAGES)

    def faults(window_s: float) -> None:
        started = time.monotonic()

        def s3_outage() -> None:
            at(0.1, window_s, started)
            running_s3.stop()
            time.sleep(S3_DOWN_S)
            running_s3.start()

        def audio_crash() -> None:
            at(0.3, window_s, started)
            services.audio.kill()
            time.sleep(2)
            services.audio.start()

        def nats_crash() -> None:  # JetStream only: the intake's own server, kill -9 and back on its store
            at(0.7, window_s, started)
            assert gateway.nats is not None
            gateway.nats.kill()
            time.sleep(1)
            gateway.nats.start()

        faults_now = [s3_outage, audio_crash] + ([nats_crash] if gateway.nats is not None else [])
        threads = [threading.Thread(target=f) for f in faults_now]
        for thread in threads:
            thread.start()
        try:
            at(0.5, window_s, started)  # Triton: in this thread (see stream)
            triton_server.process.kill()
            triton_server.process.wait()
            triton_server.start()
        finally:
            for thread in threads:
                thread.join()
        assert running_s3.process is not None and services.audio.alive and triton_server.running
        assert gateway.nats is None or gateway.nats.process is not None

    started = time.monotonic()
    figures = stream(gateway, messages, faults)
    stored = assert_stored_exactly_once(running_s3, gateway, messages, media)
    told = telling(gateway, messages, figures)
    out = report("faults", gateway, messages, figures, time.monotonic() - started, stored, told)

    assert gateway.backlog.depth() == 0 and gateway.backlog.given_up() == []
    assert figures.server_errors == 0
    assert out["retries"] > 0, "the faults never made anything wait: the test proved nothing"
    # Every deferred user told the outcome once; nobody with a final reply told anything.
    assert told.figures["deferred"] > 0, "nothing was deferred: the telling was never tested"
    assert [sid for sid in told.deferred if told.told[sid] != 1] == [], told.told
    assert told.figures["told_not_deferred"] == 0, told.told
    assert told.wrong == []
    # Nobody restarted the gateway, its worker or the vision service: they recovered on their own.
    assert (gateway.gunicorn.starts, gateway.worker.starts, services.vision.starts) == (1, 1, 1)
    assert gateway.gunicorn.alive and gateway.worker.alive and services.vision.alive


def test_gateway_killed_mid_run_loses_nothing(
    gateway: Gateway, services: Services, running_s3: SeaweedS3, media: Media
) -> None:
    messages = media.plan(MESSAGES)

    def crash(window_s: float) -> None:
        at(0.4, window_s, time.monotonic())
        # Voice notes from here on are answered "shortly": the worker owes their outcomes when it is killed,
        # and the one started after it must tell each of them.
        services.audio.kill()
        time.sleep(1.5)
        gateway.gunicorn.kill()
        gateway.worker.kill()
        time.sleep(1)
        gateway.gunicorn.start()
        gateway.worker.start()
        time.sleep(1)
        services.audio.start()

    started = time.monotonic()
    figures = stream(gateway, messages, crash)
    stored = assert_stored_exactly_once(running_s3, gateway, messages, media)
    told = telling(gateway, messages, figures)
    report("crash", gateway, messages, figures, time.monotonic() - started, stored, told)
    assert gateway.backlog.depth() == 0 and gateway.backlog.given_up() == []
    assert (gateway.gunicorn.starts, gateway.worker.starts) == (2, 2)
    assert told.figures["deferred"] > 0, "nothing was deferred: the telling was never tested"
    # At least once: a worker killed between the send and recording it sends again (told_twice, expected 0).
    assert [sid for sid in told.deferred if told.told[sid] < 1] == [], told.told
    assert told.wrong == []


def test_replayed_webhook_three_times_at_once_and_once_after_is_one_object(
    gateway: Gateway, running_s3: SeaweedS3, media: Media
) -> None:
    message = Planned(f"MM{os.urandom(16).hex()}", "+15550109999", ((media.face, "image/jpeg"),), {0: IMAGES})
    figures, lock = Figures(), threading.Lock()
    with serve_media(TEST_ACCOUNT_SID, TEST_AUTH_TOKEN) as host:
        barrier = threading.Barrier(3)

        def one() -> None:
            barrier.wait()
            deliver(gateway, host, message, figures, lock, time.monotonic() + 60)

        threads = [threading.Thread(target=one) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until_drained(gateway)
        # Once more after it completed (Twilio's debugger replay, a proxy's late resend): found, not stored again.
        deliver(gateway, host, message, figures, lock, time.monotonic() + 60)
        wait_until_drained(gateway)
    assert len(figures.latencies_s) == 4 and figures.redeliveries == 0
    assert figures.replies[message.message_sid].startswith("Saved your photo"), figures.replies
    assert assert_stored_exactly_once(running_s3, gateway, [message], media) == 1
