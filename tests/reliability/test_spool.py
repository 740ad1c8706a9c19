"""The spool on a real filesystem: dedup, leases across processes, crash leftovers, backoff, give-up."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.intake.channels import message_of
from gateway.intake.spool import Backoff, Spool
from gateway.message import to_json
from gateway.whatsapp.form import parse_webhook

SID = "MM" + "ab" * 16
FORM = {"MessageSid": SID, "From": "whatsapp:+15551234567", "NumMedia": "1",
        "MediaUrl0": "https://api.twilio.com/x", "MediaContentType0": "audio/ogg"}
MESSAGE = parse_webhook(FORM)  # what the webhook hands the spool
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# Holds the lease on SID in another process until its stdin closes, then exits (or is killed).
_HOLDER = """
import sys
from gateway.intake.spool import Spool
lease = Spool(sys.argv[1]).lease(sys.argv[2])
print("held" if lease else "none", flush=True)
sys.stdin.read()
"""


def holder(spool: Spool) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(spool.directory), SID], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_an_entry_is_written_whole_and_deduplicated_per_message_sid(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    lease = spool.add(MESSAGE, NOW)
    assert lease is not None
    assert spool.add(MESSAGE, NOW) is None  # a second delivery finds the first entry
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [f"{SID}.spool"]  # no temp file left
    record = json.loads((tmp_path / f"{SID}.spool").read_text().splitlines()[0])
    assert record["message"] == to_json(MESSAGE) and record["received_at"] == NOW.isoformat()
    assert (tmp_path / f"{SID}.spool").stat().st_mode & 0o777 == 0o600  # phone numbers inside
    lease.release()
    assert spool.depth() == 1 and spool.due() == [SID]


def test_a_new_entry_is_born_leased_and_a_lease_is_exclusive(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    lease = spool.add(MESSAGE, NOW)
    assert lease is not None
    assert spool.lease(SID) is None  # the webhook that wrote it keeps it until it has tried once
    lease.release()
    again = spool.lease(SID)
    assert again is not None and message_of(again.entry) == MESSAGE  # as parsed, not parsed again
    assert spool.lease(SID) is None
    again.release()


def test_a_lease_held_by_another_process_dies_with_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add(MESSAGE, NOW).release()
    process = holder(spool)
    try:
        assert spool.lease(SID, wait_s=0.2) is None
        process.kill()  # kill -9: no cleanup code runs, the kernel drops the flock
        process.wait()
        lease = spool.lease(SID, wait_s=5)
        assert lease is not None
        lease.release()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_waiter_does_not_redo_an_entry_finished_while_it_waited(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    lease = spool.add(MESSAGE, NOW)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(spool.lease(SID, wait_s=5)))
    waiter.start()
    time.sleep(0.2)
    lease.complete()
    waiter.join()
    assert got == [None] and spool.depth() == 0
    assert spool.add(MESSAGE, NOW) is not None  # a later delivery starts afresh (and finds its objects)


def test_outcomes_and_retries_are_appended_and_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    lease = spool.add(MESSAGE, NOW)
    lease.record_final(1, "no_face")
    lease.record_retry({0: "unavailable"}, delay_s=30)
    lease.release()
    assert spool.due() == []  # not due for 30 s
    assert spool.due(now=time.time() + 31) == [SID]
    again = spool.lease(SID)
    assert again.entry.finals == {1: "no_face"} and again.entry.attempts == 1
    again.release()


def test_a_torn_last_line_from_a_crash_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    lease = spool.add(MESSAGE, NOW)
    lease.record_final(1, "no_face")
    lease.release()
    with open(tmp_path / f"{SID}.spool", "ab") as handle:
        handle.write(b'{"index":0,"outc')  # power lost mid-append
    again = spool.lease(SID)
    assert again is not None and again.entry.finals == {1: "no_face"}
    again.release()


def test_temp_files_of_a_crashed_add_are_not_entries(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / f".{SID}.0123.tmp").write_text(json.dumps({"form": FORM}))
    assert spool.depth() == 0 and spool.due() == []


def test_complete_empties_the_spool_and_give_up_keeps_the_entry_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.add(MESSAGE, NOW).complete()
    assert spool.depth() == 0 and not (tmp_path / f"{SID}.spool").exists()
    moved = spool.add(MESSAGE, NOW).give_up()
    assert spool.depth() == 0 and spool.failed() == [moved]
    assert json.loads(moved.read_text().splitlines()[0])["message"] == to_json(MESSAGE)


def test_oldest_age_is_measured_from_the_webhook(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.oldest_age_s() == 0.0
    received = datetime.now(UTC) - timedelta(seconds=90)
    spool.add(MESSAGE, received).release()
    assert 89 < spool.oldest_age_s() < 120


def test_message_sids_that_are_not_file_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path).add(replace(MESSAGE, message_sid="../../etc"), NOW)


def test_backoff_doubles_within_its_bounds_with_jitter() -> None:
    backoff = Backoff(base_s=1.0, max_s=60.0)
    rng = random.Random(7)
    for attempt, step in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert max(delays) - min(delays) > step / 4  # really spread, not one wave


def test_spool_files_survive_in_place_of_a_missing_parent(tmp_path: Path) -> None:
    # SPOOL_DIR is created (with failed/) on start, like MEDIA_ROOT.
    spool = Spool(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "failed").is_dir()
    assert os.access(spool.directory, os.W_OK)


def test_an_entry_retried_with_no_delay_is_due_at_once(tmp_path: Path) -> None:
    """due_at is kept to the millisecond rounded down: rounded to nearest, one in four such entries was not due
    yet when a worker looked straight away (a flaky worker test found it)."""
    spool = Spool(tmp_path)
    for n in range(300):
        sid = "MM" + f"{n:032x}"
        lease = spool.add(replace(MESSAGE, message_sid=sid), datetime.now(UTC))
        assert lease is not None
        lease.record_retry({0: "unavailable"}, 0)
        lease.release()
        assert sid in spool.due(), n


@pytest.mark.parametrize("channel", ["whatsapp", "telegram"])
def test_an_entry_in_the_format_before_is_read_with_its_channels_parser(tmp_path: Path, channel: str) -> None:
    """Line 1 as the version before wrote it: the raw form (and "channel" for Telegram), no parsed message.
    Such entries, on disk across an upgrade, are leased, read and erased like today's."""
    from gateway.telegram.updates import message_id

    if channel == "whatsapp":
        sid, form, line_1 = SID, FORM, {"message_sid": SID, "received_at": NOW.isoformat(), "form": FORM}
    else:
        sid = message_id(-100123, 42, "secret")
        form = {"MessageSid": sid, "UpdateId": "7", "ChatId": "-100123", "ChatType": "private", "MessageId": "42",
                "UserId": "4242", "FirstName": "Ada", "MessageType": "voice", "Text": "", "MediaGroupId": "",
                "FileId": "AwACAgIAAx0", "FileSize": "5000", "ContentType": "audio/ogg"}
        line_1 = {"message_sid": sid, "received_at": NOW.isoformat(), "form": form, "channel": "telegram"}
    (tmp_path / f"{sid}.spool").write_text(json.dumps(line_1) + "\n" + json.dumps({"index": 0, "outcome": "busy"}) + "\n")
    spool = Spool(tmp_path)
    assert spool.due() == [sid] and spool.depth() == 1

    lease = spool.lease(sid)
    assert lease is not None and lease.entry.finals == {0: "busy"}
    message = message_of(lease.entry)
    lease.release()
    assert message.message_sid == sid and message.channel == channel and len(message.media) == 1
    if channel == "whatsapp":
        assert message == MESSAGE  # exactly what today's webhook would spool for the same form
    else:
        assert message.sender_id == "telegram/4242" and message.conversation is not None
        assert (message.conversation.chat_id, message.conversation.message_id) == (-100123, 42)
        assert message.media[0].url == "telegram-file:AwACAgIAAx0"

    from gateway.intake.spooled import forget_sender

    assert forget_sender(spool, "15550000000") == 0 and spool.depth() == 1  # someone else's erasure
    assert forget_sender(spool, message.sender_id) == 1 and spool.depth() == 0


def test_a_spooled_message_reads_back_as_it_was_parsed(tmp_path: Path) -> None:
    """Today's format: the parsed message round-trips, and a first line naming a sender the channels could
    not have made (a path that climbs) is refused on the way back, not turned into a storage key."""
    from gateway.message import InvalidWebhook, from_json
    from gateway.sender import InvalidSender

    assert from_json(to_json(MESSAGE)) == MESSAGE
    spool = Spool(tmp_path)
    spool.add(MESSAGE, NOW).release()
    lease = spool.lease(SID)
    assert lease is not None and message_of(lease.entry) == MESSAGE
    lease.release()
    with pytest.raises(InvalidSender):
        from_json({**to_json(MESSAGE), "sender_id": "../15551234567"})
    with pytest.raises(InvalidWebhook):
        from_json({**to_json(MESSAGE), "media": [{"index": 3, "url": "x", "content_type": "audio/ogg"}]})
