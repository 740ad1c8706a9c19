"""MEDIA_MEMORY_MB: the media one gateway process holds at once, across its threads.

The allowance on its own (claims, waits, giving up), then through the real app with a real audio service:
a voice note that finds the allowance full is spooled for the worker, not dropped, and converts once
there is room.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gateway import replies
from gateway.budget import Budget
from gateway.intake.attempt import Attempts
from gateway.media_memory import MIB, MediaMemory, MemoryBusy
from gateway.processing import MAX_WAV_BYTES
from gateway.intake.spool import Backoff, Spool
from tests.fixtures.gateway import MediaServer, media_files, media_form, reply_of, signed_post, spooled


def test_claims_add_up_and_are_given_back() -> None:
    memory = MediaMemory(10 * MIB, max_wait_s=0.1)
    with memory.claim(Budget(5)) as first, memory.claim(Budget(5)) as second:
        first.take(4 * MIB)
        second.take(6 * MIB)
        assert memory.used == 10 * MIB
    assert memory.used == 0


def test_a_full_allowance_makes_an_item_wait_then_give_up() -> None:
    memory = MediaMemory(10 * MIB, max_wait_s=0.2)
    with memory.claim(Budget(5)) as holder:
        holder.take(8 * MIB)
        with memory.claim(Budget(5)) as late, pytest.raises(MemoryBusy, match="8 of 10 MiB"):
            late.take(4 * MIB)
        # Room given back while an item waits lets it through.
        waiter_done = threading.Event()

        def wait_for_room() -> None:
            with memory.claim(Budget(5)) as waiter:
                memory.max_wait_s = 5
                waiter.take(4 * MIB)
                waiter_done.set()

        thread = threading.Thread(target=wait_for_room)
        thread.start()
        time.sleep(0.2)
        assert not waiter_done.is_set()
    thread.join(5)
    assert waiter_done.is_set()
    assert memory.used == 0


def test_an_item_never_waits_past_its_webhook_budget() -> None:
    memory = MediaMemory(1 * MIB, max_wait_s=60)
    with memory.claim(Budget(5)) as holder:
        holder.take(MIB)
        started = time.monotonic()
        with memory.claim(Budget(1.2)) as late, pytest.raises(MemoryBusy):
            late.take(1)  # 1.2 s budget - 1 s kept for the work itself: gives up after ~0.2 s
        assert time.monotonic() - started < 5


def test_one_item_alone_always_fits() -> None:
    memory = MediaMemory(16 * MIB, max_wait_s=0.1)
    with memory.claim(Budget(5)) as claim:
        claim.take(16 * MIB + MAX_WAV_BYTES)  # more than the whole allowance: cut to it, not refused
        assert claim.held == 16 * MIB


def test_a_voice_note_finding_no_room_is_spooled_then_converted(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path,
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, MEDIA_MEMORY_MB="40", MEDIA_MEMORY_WAIT_S="0.3")
    services = app.extensions["mediabot"]
    memory = services.processor._memory
    assert memory.capacity == 40 * MIB
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])

    with memory.claim(Budget(30)) as other_media:
        other_media.take(20 * MIB)  # what other threads hold: a voice note's claim (29 MB + its size) won't fit
        assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    assert media_files(media_root) == []
    assert spooled(media_root) == [form["MessageSid"]]

    # With the room back, the spool's next attempt (what gateway.intake.worker runs) converts and stores it.
    spool = Spool(services.settings.spool_dir)
    intake = Attempts(services.processor, Backoff(0.1, 0.1), give_up_after_s=3600)
    lease = spool.lease(form["MessageSid"])
    assert lease is not None
    attempt = intake.attempt(lease, Budget(10), skip_finals=True)
    assert attempt.results[0].outcome == "saved"
    assert spooled(media_root) == []
    assert len([p for p in media_files(media_root) if p.suffix == ".wav"]) == 1
    assert memory.used == 0
