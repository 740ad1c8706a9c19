"""The JetStream intake against a real nats-server -js (tests/fixtures/nats.py): every guarantee the spool
gives, checked on the server's real behaviour (dedup, work-queue deletion, redelivery, MaxDeliver, restarts)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest

from bench.nats_server import NatsServer
from gateway.intake.jetstream import (
    DeadLetterNotFound,
    IntakeUnavailable,
    JetStreamQueue,
    JetStreamSettings,
    sender_key,
)

ALICE = sender_key("15551230001")
BOB = sender_key("15551230002")


def sid(n: int) -> str:
    return f"SM{n:032x}"


@pytest.fixture
def settings(nats_server: NatsServer) -> JetStreamSettings:
    """Short waits, so redeliveries happen within a test."""
    return JetStreamSettings(url=nats_server.url, ack_wait_s=1.0, backoff_s=(), max_deliver=3,
                             connect_timeout_s=1.0, reconnect_wait_s=0.2, request_timeout_s=2.0,
                             publish_timeout_s=2.0)


@pytest.fixture
def intake(settings: JetStreamSettings) -> Iterator[JetStreamQueue]:
    made = JetStreamQueue(settings)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def second_worker(settings: JetStreamSettings) -> Iterator[JetStreamQueue]:
    """Another process's intake: its own loop and connection."""
    made = JetStreamQueue(settings)
    try:
        yield made
    finally:
        made.close()


def test_a_replayed_message_id_is_stored_once(intake: JetStreamQueue) -> None:
    assert [intake.publish(sid(1), b"webhook", ALICE) for _ in range(3)] == [True, False, False]
    assert intake.depth() == 1
    [delivery] = intake.fetch(batch=10, timeout_s=1)
    assert (delivery.payload, delivery.message_id, delivery.number, delivery.sender_key) == (b"webhook", sid(1), 1, ALICE)
    delivery.ack()
    assert intake.fetch(timeout_s=0.5) == []
    # Still inside the duplicate window after it was processed: a late replay is dropped, not redone.
    assert intake.publish(sid(1), b"webhook", ALICE) is False
    assert intake.depth() == 0


def test_the_duplicate_window_is_hours_on_the_server(intake: JetStreamQueue, nats_server: NatsServer) -> None:
    import asyncio

    import nats

    intake.ensure_topology()

    async def window() -> float:
        nc = await nats.connect(nats_server.url)
        try:
            return (await nc.jetstream().stream_info(intake.settings.stream)).config.duplicate_window
        finally:
            await nc.close()

    assert asyncio.run(window()) == 6 * 3600


def test_two_competing_workers_process_each_message_once(
    intake: JetStreamQueue, second_worker: JetStreamQueue
) -> None:
    ids = [sid(n) for n in range(200)]
    for message_id in ids:
        assert intake.publish(message_id, message_id.encode(), ALICE if int(message_id[2:], 16) % 2 else BOB)
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(name: str, worker: JetStreamQueue) -> None:
        idle = 0
        while idle < 3:
            deliveries = worker.fetch(batch=5, timeout_s=0.3)
            idle = 0 if deliveries else idle + 1
            for delivery in deliveries:
                with lock:
                    seen.append((name, delivery.message_id))
                delivery.ack()

    threads = [threading.Thread(target=work, args=("a", intake)), threading.Thread(target=work, args=("b", second_worker))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    counts = Counter(message_id for _, message_id in seen)
    assert sorted(counts) == ids
    assert max(counts.values()) == 1
    assert {name for name, _ in seen} == {"a", "b"}, "both workers took a share"
    assert intake.depth() == 0


def test_nak_with_a_delay_redelivers_after_the_delay(intake: JetStreamQueue, second_worker: JetStreamQueue) -> None:
    intake.publish(sid(1), b"x", ALICE)
    [first] = intake.fetch(timeout_s=1)
    naked_at = time.monotonic()
    first.nak(delay_s=1.5)
    assert second_worker.fetch(timeout_s=1.0) == [], "redelivered before its delay"
    [again] = second_worker.fetch(timeout_s=3)
    assert time.monotonic() - naked_at >= 1.4
    assert (again.message_id, again.number, again.is_last) == (sid(1), 2, False)
    again.ack()


def test_an_unacked_delivery_goes_to_another_worker_after_the_ack_wait(
    intake: JetStreamQueue, second_worker: JetStreamQueue
) -> None:
    intake.publish(sid(1), b"x", ALICE)
    [taken] = intake.fetch(timeout_s=1)  # and its worker dies: no ack, no nak
    assert taken.number == 1
    [again] = second_worker.fetch(timeout_s=4)
    assert (again.message_id, again.number) == (sid(1), 2)
    again.ack()
    assert intake.depth() == 0


def test_in_progress_keeps_a_long_attempt_from_a_second_worker(
    intake: JetStreamQueue, second_worker: JetStreamQueue
) -> None:
    intake.publish(sid(1), b"x", ALICE)
    [long_attempt] = intake.fetch(timeout_s=1)
    deadline = time.monotonic() + 3.0  # three ack waits
    while time.monotonic() < deadline:
        long_attempt.in_progress()
        assert second_worker.fetch(timeout_s=0.4) == []
    long_attempt.ack()
    assert second_worker.fetch(timeout_s=1.5) == []
    assert intake.depth() == 0


def test_max_deliver_dead_letter_then_replay_delivers_it_again(intake: JetStreamQueue) -> None:
    intake.publish(sid(1), b"the webhook", ALICE)
    for number in (1, 2):
        [delivery] = intake.fetch(timeout_s=2)
        assert (delivery.message_id, delivery.number, delivery.is_last) == (sid(1), number, False)
        delivery.nak()
    [last] = intake.fetch(timeout_s=2)
    assert (last.message_id, last.number, last.is_last) == (sid(1), 3, True)
    intake.publish(sid(2), b"another", BOB)
    dead_id = last.dead_letter("storage_unavailable")

    [letter] = intake.dead_letters()
    assert (letter.id, letter.message_id, letter.sender_key, letter.deliveries, letter.reason, letter.payload) == (
        dead_id, sid(1), ALICE, 3, "storage_unavailable", b"the webhook")
    assert letter.published_at is not None and letter.dead_at >= letter.published_at
    assert intake.depth() == 1, "only sid(2) is still owed work"
    [other] = intake.fetch(timeout_s=2)
    assert other.message_id == sid(2)
    other.ack()

    # The original id is still inside the duplicate window: a replay must not be dropped as a duplicate.
    assert intake.publish(sid(1), b"the webhook", ALICE) is False
    assert intake.replay_dead_letter(dead_id) is True
    assert intake.dead_letters() == []
    [replayed] = intake.fetch(timeout_s=2)
    assert (replayed.message_id, replayed.payload, replayed.number, replayed.sender_key) == (sid(1), b"the webhook", 1, ALICE)
    replayed.ack()
    with pytest.raises(DeadLetterNotFound):
        intake.replay_dead_letter(dead_id)


def test_a_worker_dying_on_the_last_delivery_still_leaves_a_dead_letter(intake: JetStreamQueue) -> None:
    """No worker is alive to copy it: the MAX_DELIVERIES advisory the server publishes is swept into a
    dead letter with the payload, which the work stream still holds (checked: it keeps it, undeliverable)."""
    settings = replace(intake.settings, max_deliver=2)
    worker = JetStreamQueue(settings)
    try:
        worker.publish(sid(7), b"poison", ALICE)
        assert [d.number for d in worker.fetch(timeout_s=2)] == [1]  # never settled: the worker "dies"
        [last] = worker.fetch(timeout_s=4)
        assert last.is_last  # and dies again
        time.sleep(1.6)  # past the ack wait: the server gives up on it and says so
        assert worker.fetch(timeout_s=0.5) == []
        assert worker.depth() == 0
        assert worker.sweep_dead_letters() == 1
        [letter] = worker.dead_letters()
        assert (letter.message_id, letter.payload, letter.deliveries, letter.reason) == (
            sid(7), b"poison", 2, "max_deliveries_without_ack")
        assert worker.sweep_dead_letters() == 0
        assert worker.oldest_age_s() == 0.0
    finally:
        worker.close()


def test_term_deletes_without_a_dead_letter_and_drop_deletes_a_dead_letter(intake: JetStreamQueue) -> None:
    intake.publish(sid(1), b"unreadable", ALICE)
    [delivery] = intake.fetch(timeout_s=2)
    delivery.term()
    assert intake.fetch(timeout_s=1.5) == []
    assert intake.depth() == 0
    assert intake.dead_letters() == []

    intake.publish(sid(2), b"given up", ALICE)
    [delivery] = intake.fetch(timeout_s=2)
    dead_id = delivery.dead_letter("gave_up")
    intake.drop_dead_letter(dead_id)
    assert intake.dead_letters() == []
    with pytest.raises(DeadLetterNotFound):
        intake.drop_dead_letter(dead_id)
    assert intake.fetch(timeout_s=1.5) == []


def test_a_server_killed_mid_run_loses_nothing_and_the_client_reconnects(
    intake: JetStreamQueue, nats_server: NatsServer
) -> None:
    ids = [sid(n) for n in range(60)]
    for message_id in ids:
        assert intake.publish(message_id, message_id.encode(), ALICE)
    done: Counter[str] = Counter()
    while sum(done.values()) < 20:
        for delivery in intake.fetch(batch=5, timeout_s=1):
            delivery.ack()
            done[delivery.message_id] += 1
    in_hand = intake.fetch(batch=5, timeout_s=1)  # being worked on when the server dies
    assert len(in_hand) == 5

    nats_server.kill()
    assert intake.ready() is False
    started = time.monotonic()
    with pytest.raises(IntakeUnavailable):
        intake.publish(sid(999), b"during the outage", ALICE, timeout_s=5.0)
    assert time.monotonic() - started < 2.5, "publishing during a known outage must not wait out its timeout"
    with pytest.raises(IntakeUnavailable):
        in_hand[0].ack()

    nats_server.start()
    deadline = time.monotonic() + 15
    while not intake.ready():
        assert time.monotonic() < deadline, "the client did not reconnect to the restarted server"
        time.sleep(0.1)
    assert intake.publish(sid(1000), b"after", ALICE)
    ids.append(sid(1000))
    idle = 0
    while idle < 3:
        deliveries = intake.fetch(batch=10, timeout_s=1.5)
        idle = 0 if deliveries else idle + 1
        for delivery in deliveries:
            delivery.ack()
            done[delivery.message_id] += 1
    assert set(done) == set(ids), "every stored message was delivered after the restart"
    assert sid(999) not in done
    assert intake.depth() == 0


def test_a_publish_racing_the_crash_fails_within_its_timeout_and_is_stored_at_most_once(
    intake: JetStreamQueue, nats_server: NatsServer
) -> None:
    """Published before the client has noticed the crash: the PUB sits in nats-py's reconnect buffer and
    may reach the restarted server. The caller got IntakeUnavailable ("not confirmed", not "not stored");
    a later publish of the same id is then a duplicate, so the message is still stored and delivered once."""
    intake.ensure_topology()
    nats_server.kill()
    started = time.monotonic()
    with pytest.raises(IntakeUnavailable):
        intake.publish(sid(1), b"racing", ALICE, timeout_s=1.0)
    assert time.monotonic() - started < 1.0 + 1.5  # its timeout, and room for a loaded machine
    nats_server.start()
    deadline = time.monotonic() + 15
    while not intake.ready():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    intake.publish(sid(1), b"racing", ALICE)  # True if the buffered PUB was lost, False if it got there
    assert [d.message_id for d in intake.fetch(batch=5, timeout_s=1.5)] == [sid(1)]


def test_publishing_while_the_server_is_down_from_the_start_fails_fast(tmp_path) -> None:  # noqa: ANN001
    server = NatsServer(root=tmp_path / "later")
    server.start()
    url = server.url
    server.stop()
    intake = JetStreamQueue(JetStreamSettings(url=url, connect_timeout_s=1.0, reconnect_wait_s=0.2))
    try:
        started = time.monotonic()
        with pytest.raises(IntakeUnavailable):
            intake.publish(sid(1), b"x", ALICE)
        assert intake.ready() is False
        assert time.monotonic() - started < 5
        server.start()  # the same port: the next call connects
        time.sleep(0.3)
        assert intake.ready() is True
        assert intake.publish(sid(1), b"x", ALICE) is True
    finally:
        intake.close()
        server.stop()


def _offer_later(worker: JetStreamQueue, message_id: str, payload: bytes, result: list[bool]) -> None:
    [delivery] = worker.fetch(timeout_s=3)
    assert delivery.message_id == message_id
    result.append(worker.offer_outcome(message_id, payload, timeout_s=1.0))
    delivery.ack()


def test_outcome_taken_by_the_waiting_webhook(intake: JetStreamQueue, second_worker: JetStreamQueue) -> None:
    offered: list[bool] = []
    with intake.wait_outcome(sid(1)) as waiter:
        assert intake.publish(sid(1), b"webhook", ALICE)
        worker = threading.Thread(target=_offer_later, args=(second_worker, sid(1), b"saved", offered))
        worker.start()
        outcome = waiter.wait(5)
        worker.join()
    assert outcome == b"saved"
    assert offered == [True], "the webhook took it: the worker must not tell the user again"


def test_outcome_not_taken_when_the_webhook_stopped_waiting(
    intake: JetStreamQueue, second_worker: JetStreamQueue
) -> None:
    with intake.wait_outcome(sid(1)) as waiter:
        assert intake.publish(sid(1), b"webhook", ALICE)
        assert waiter.wait(0.1) is None  # its budget ran out: it says "received, will be done shortly"
        offered: list[bool] = []
        _offer_later(second_worker, sid(1), b"saved", offered)  # still subscribed, but refusing
        assert offered == [False]
        assert waiter.wait(0) is None
    # The gateway gone entirely: usually "no responders" at once, at worst the offer's timeout (a CI run
    # once waited the full second for it); either way the worker keeps the outcome and tells it itself.
    # How long the answer takes is not this test's business (speed belongs in bench/).
    assert second_worker.offer_outcome(sid(1), b"saved", timeout_s=1.0) is False


def test_outcome_told_exactly_once_when_the_offer_races_the_timeout(
    intake: JetStreamQueue, second_worker: JetStreamQueue
) -> None:
    """The webhook's timeout and the worker's offer land at the same moment, many times over: every time
    exactly one of them ends up holding the outcome."""
    for n in range(40):
        message_id = sid(n)
        results: list[bool] = []
        with intake.wait_outcome(message_id) as waiter:
            offer = threading.Thread(target=lambda m=message_id: results.append(
                second_worker.offer_outcome(m, b"saved", timeout_s=1.0)))
            wait_s = 0.002 * (n % 8)
            offer.start()
            outcome = waiter.wait(wait_s)
        offer.join()
        assert (outcome == b"saved") == results[0], f"round {n}: gateway {outcome!r}, worker {results[0]}"


def test_telling_is_claimed_once_across_workers_and_replays(
    intake: JetStreamQueue, second_worker: JetStreamQueue
) -> None:
    """The claim is the bucket's atomic create: one winner among racing workers, none after; a replay
    (published as ``<id>~replay~<n>``) is a new message and gets its own claim."""
    for n in range(20):
        barrier = threading.Barrier(2)
        results: list[bool | None] = []

        def claim(queue: JetStreamQueue, m: int = n) -> None:
            barrier.wait()
            results.append(queue.claim_telling(sid(m), f"1.{id(queue)}"))

        racers = [threading.Thread(target=claim, args=(q,)) for q in (intake, second_worker)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(results, key=str) == [False, True], f"round {n}: {results}"
    assert second_worker.claim_telling(sid(3), "1.9") is False
    assert intake.claim_telling(f"{sid(3)}~replay~7", "1.1") is True
    assert intake.claim_telling(f"{sid(3)}~replay~7", "1.2") is False
    assert intake.claim_telling(f"{sid(3)}~replay~7", "1.1") is True  # asked again by the claimant


def test_a_telling_claim_survives_a_server_kill_and_one_made_as_it_died_is_found_by_its_claimant(
    intake: JetStreamQueue, second_worker: JetStreamQueue, nats_server: NatsServer
) -> None:
    assert intake.claim_telling(sid(1), "1.1") is True
    nats_server.kill()
    # Unknown (None), or, if the client had not noticed yet, a claim that may land after the reconnect.
    assert intake.claim_telling(sid(2), "1.1") is None
    nats_server.start()
    wait_until(lambda: intake.ready() and second_worker.ready(), 10)
    assert second_worker.claim_telling(sid(1), "1.2") is False  # the file store kept it
    assert intake.claim_telling(sid(2), "1.1") is True  # landed late or made now: the claimant's either way
    assert second_worker.claim_telling(sid(2), "1.2") is False


def test_the_told_bucket_keeps_claims_for_the_duplicate_window_in_files(
    intake: JetStreamQueue, nats_server: NatsServer
) -> None:
    import asyncio

    import nats

    intake.ensure_topology()

    async def bucket() -> tuple[float, str, int]:
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(f"KV_{intake.settings.told_bucket}")
            return info.config.max_age, str(info.config.storage), info.config.num_replicas
        finally:
            await nc.close()

    assert asyncio.run(bucket()) == (intake.settings.duplicate_window_s, "file", 1)
    # A changed window reaches the existing bucket.
    changed = JetStreamQueue(replace(intake.settings, duplicate_window_s=3600.0))
    try:
        changed.ensure_topology()
        assert asyncio.run(bucket())[0] == 3600.0
    finally:
        changed.close()


def wait_until(check, timeout_s: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_purge_by_sender_leaves_the_others(intake: JetStreamQueue) -> None:
    for n in range(3):
        intake.publish(sid(n), b"alice", ALICE)
    for n in range(3, 5):
        intake.publish(sid(n), b"bob", BOB)
    [first] = intake.fetch(timeout_s=2)
    assert first.sender_key == ALICE
    first.dead_letter("gave_up")
    assert intake.purge_sender(ALICE) == 3  # two waiting, one dead letter
    assert intake.dead_letters() == []
    assert intake.depth() == 2
    left = []
    for _ in range(2):
        [delivery] = intake.fetch(timeout_s=2)
        left.append(delivery.payload)
        delivery.ack()
    assert left == [b"bob", b"bob"]
    assert intake.purge_sender(ALICE) == 0


def test_depth_and_oldest_age(intake: JetStreamQueue) -> None:
    assert (intake.depth(), intake.oldest_age_s()) == (0, 0.0)
    intake.publish(sid(1), b"x", ALICE)
    time.sleep(1.0)
    second_published = time.monotonic()
    intake.publish(sid(2), b"y", ALICE)
    assert intake.depth() == 2
    assert 0.9 <= intake.oldest_age_s() < 10
    [delivery] = intake.fetch(timeout_s=2)  # in a worker's hands: still owed
    assert intake.depth() == 2
    assert intake.oldest_age_s() >= 0.9
    delivery.ack()
    assert intake.depth() == 1
    # The second message's age: no more than the time since it was published (plus the clocks' rounding).
    assert intake.oldest_age_s() <= time.monotonic() - second_published + 0.5, "the oldest is now the second"
    [delivery] = intake.fetch(timeout_s=2)
    delivery.ack()
    assert (intake.depth(), intake.oldest_age_s()) == (0, 0.0)


def test_no_phone_number_in_a_subject(intake: JetStreamQueue) -> None:
    key = sender_key("15551230001")
    assert len(key) == 32 and "1555123" not in key
    assert sender_key("15551230001", "secret") != key
    assert intake.settings.work_subject(key) == f"mediabot.in.{key}"
    with pytest.raises(ValueError):
        intake.settings.work_subject("+1555.123")
    with pytest.raises(ValueError):
        intake.publish("SM.x", b"", key)


def test_a_changed_configuration_updates_the_stream_and_consumer(intake: JetStreamQueue) -> None:
    intake.publish(sid(1), b"kept", ALICE)
    changed = JetStreamQueue(replace(intake.settings, duplicate_window_s=3600.0, max_deliver=5))
    try:
        changed.ensure_topology()
        [delivery] = changed.fetch(timeout_s=2)
        assert delivery.payload == b"kept" and delivery.is_last is False
        delivery.ack()
    finally:
        changed.close()


def _publish_in_child(intake: JetStreamQueue, message_id: str) -> None:
    raise SystemExit(0 if intake.publish(message_id, b"from the child", ALICE) else 3)


def test_a_forked_child_gets_its_own_connection(intake: JetStreamQueue) -> None:
    """As under gunicorn: the parent used the intake before forking; the child still works."""
    assert intake.publish(sid(1), b"from the parent", ALICE)
    child = multiprocessing.get_context("fork").Process(target=_publish_in_child, args=(intake, sid(2)))
    child.start()
    child.join(timeout=20)
    assert child.exitcode == 0
    assert intake.depth() == 2


@pytest.mark.parametrize("bad", [
    {"backoff_s": (0.5,), "ack_wait_s": 1.0},
    {"max_deliver": 2, "backoff_s": (60.0, 60.0)},
    {"stream": "a.b"},
    {"replicas": 0},
])
def test_settings_refuse_what_the_server_would_or_what_breaks_a_guarantee(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        JetStreamSettings(**bad)


def test_dead_letters_cli_lists_replays_and_drops_without_phone_numbers(
    intake: JetStreamQueue, nats_server: NatsServer
) -> None:
    import io

    from gateway.intake.dead_letters import main

    phone = "15551230001"
    for n in (1, 2):
        intake.publish(sid(n), f'{{"From": "whatsapp:+{phone}"}}'.encode(), sender_key(phone))
        [delivery] = intake.fetch(timeout_s=2)
        delivery.dead_letter(f"storage_unavailable {phone}" if n == 2 else "storage_unavailable")

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        code = main(["--nats-url", nats_server.url, *args], settings=intake.settings, out=out)
        return code, out.getvalue()

    code, listing = run("list")
    assert code == 0
    lines = listing.splitlines()
    assert lines[0].split() == ["ID", "MESSAGE", "SENDER", "KEY", "DELIVERIES", "DEAD", "SINCE", "REASON"]
    assert [line.split()[1] for line in lines[1:]] == [sid(1), sid(2)]
    assert phone not in listing and "1555123" not in listing
    first_id, second_id = (int(line.split()[0]) for line in lines[1:])

    assert run("replay", str(first_id)) == (0, f"replayed dead letter {first_id} ({sid(1)})\n")
    [replayed] = intake.fetch(timeout_s=2)
    assert replayed.message_id == sid(1)
    replayed.ack()
    assert run("drop", str(second_id)) == (0, f"dropped dead letter {second_id} ({sid(2)})\n")
    assert run("list") == (0, "no dead letters\n")
    assert run("drop", str(second_id)) == (1, f"no dead letter {second_id}\n")
    nats_server.kill()
    code, text = run("list")
    assert code == 2 and text.startswith("NATS is not reachable")
