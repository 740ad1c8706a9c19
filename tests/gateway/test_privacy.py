"""Privacy from the chat, through the real app: MY DATA, DELETE / DELETE ALL, the first-contact notice, no
resurrection of a message in flight or spooled, and the operator's delete and export commands."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask

from gateway import replies
from gateway.budget import Budget
from gateway.config import Settings
from gateway.intake.attempt import Attempts
from gateway.intake.housekeeping import PrivacySweep
from gateway.privacy import Command, Privacy, Usage, parse_command
from gateway.services import Services
from gateway.whatsapp.simulate import messages_of
from gateway.intake.spool import Backoff, Spool
from gateway.intake.spooled import SpoolEraser
from gateway.storage.filesystem import FilesystemStore
from gateway.storage.keys import AUDIO, IMAGES, MediaRef
from gateway.intake.worker import SpoolWorker
from tests.fixtures.s3 import SeaweedS3
from tests.fixtures.gateway import (
    SENDER,
    SENDER_ID,
    MediaServer,
    gateway_env,
    media_files,
    media_form,
    signed_post,
    spooled,
    stored_files,
)

REPO = Path(__file__).resolve().parents[2]
OTHER = "+15557654321"


def say(app: Flask, body: str, from_number: str = SENDER, **kwargs: object) -> list[str]:
    """Send a text message; every message of the reply (the reply, then a notice on first contact)."""
    response = signed_post(app.test_client(), media_form(Body=body, from_number=from_number), **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return messages_of(response.get_data(as_text=True))


def send_voice(app: Flask, media_server: MediaServer, voice_note: Path, from_number: str = SENDER,
               delay_s: float = 0.0) -> list[str]:
    url = media_server.add(f"/media/{os.urandom(4).hex()}", body=voice_note.read_bytes(), content_type="audio/ogg",
                           delay_s=delay_s)
    response = signed_post(app.test_client(), media_form([(url, "audio/ogg")], from_number=from_number))
    return messages_of(response.get_data(as_text=True))


# -- pure logic -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "command"), [
    ("MY DATA", Command.MY_DATA), ("my data", Command.MY_DATA), ("  My   Data. ", Command.MY_DATA),
    ("mydata", Command.MY_DATA), ("delete", Command.DELETE), ("DELETE!", Command.DELETE),
    ("Delete all", Command.DELETE_ALL), ("DELETE  ALL", Command.DELETE_ALL),
    ("please delete my photo", None), ("STOP", None), ("HELP", None), ("", None), ("delete everything", None),
])
def test_commands_are_the_whole_message_in_any_case(body: str, command: Command | None) -> None:
    assert parse_command(body) is command


def test_usage_counts_sizes_and_dates(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    for n, (kind, content_type, when) in enumerate([(AUDIO, "audio/wav", datetime(2026, 1, 2, tzinfo=UTC)),
                                                    (IMAGES, "image/jpeg", datetime(2026, 3, 4, tzinfo=UTC))], 1):
        store.put(MediaRef(SENDER_ID, kind, "MM" + f"{n:032x}", 0), b"x" * (100 + n), content_type=content_type,
                  metadata={}, received_at=when)
    usage = Usage.of(store.list(SENDER_ID))
    assert (usage.voice_messages, usage.photos, usage.total_bytes) == (1, 1, 101 + 102)
    assert (usage.first, usage.last) == (datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC))
    assert usage.describe() == "1 voice message and 1 photo (203 bytes)"


# -- the notice -------------------------------------------------------------------------------------------


def test_first_contact_gets_the_notice_once(gateway_app: Flask, media_server: MediaServer, voice_note: Path) -> None:
    first = say(gateway_app, "hello")
    assert len(first) == 2 and "Send MY DATA to see what I keep, or DELETE to erase it." in first[1]
    assert say(gateway_app, "hello again") == [first[0]]
    assert len(send_voice(gateway_app, media_server, voice_note)) == 1


def test_a_sender_with_media_already_kept_gets_no_notice(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path
) -> None:
    send_voice(gateway_app, media_server, voice_note)  # first contact: reply + notice
    (media_root / ".mediabot").rename(media_root.parent / "markers-moved-away")  # as before this release
    assert len(say(gateway_app, "hi")) == 1  # something is kept already: no notice


def test_notice_text_and_policy_link_are_configurable(make_gateway: Callable[..., Flask], audio_server: str) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, PRIVACY_NOTICE="We keep your media for 30 days.",
                       PRIVACY_POLICY_URL="https://example.org/privacy", RETENTION_DAYS="30")
    assert say(app, "hi")[1] == "We keep your media for 30 days. Privacy policy: https://example.org/privacy"
    default = make_gateway(AUDIO_SERVICE_ADDR=audio_server, RETENTION_DAYS="30")
    assert "for 30 days" in say(default, "hi", from_number=OTHER)[1]


# -- MY DATA ----------------------------------------------------------------------------------------------


def test_my_data_on_an_empty_and_a_full_prefix(gateway_app: Flask, media_server: MediaServer, voice_note: Path) -> None:
    assert say(gateway_app, "MY DATA")[0].startswith("I keep nothing of yours.")
    send_voice(gateway_app, media_server, voice_note)
    send_voice(gateway_app, media_server, voice_note)
    [reply] = say(gateway_app, "my data")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert reply.startswith("I keep 2 voice messages and 0 photos (") and f"from {today}." in reply, reply
    assert reply.endswith("Send DELETE to erase them.")


# -- DELETE, DELETE ALL -----------------------------------------------------------------------------------


def test_delete_asks_first_and_erases_nothing(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path
) -> None:
    send_voice(gateway_app, media_server, voice_note)
    before = stored_files(media_root)
    [reply] = say(gateway_app, "DELETE")
    assert reply.startswith("This will erase 1 voice message and 0 photos (") and "DELETE ALL within 10 minutes" in reply
    assert stored_files(media_root) == before


def test_delete_all_erases_everything_of_the_sender_and_nothing_of_another(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    short, long_ = "+1555123456", "+15551234567"  # one id is a prefix of the other
    for number in (short, long_, long_):
        send_voice(gateway_app, media_server, voice_note, from_number=number)
    others_files = [p for p in stored_files(media_root) if "/15551234567/" in f"/{p}/"]
    caplog.set_level(logging.INFO, logger="gateway.audit")

    say(gateway_app, "delete", from_number=long_)
    [done] = say(gateway_app, "DELETE ALL", from_number=long_)

    assert done.startswith("Done: I erased 2 files I kept for you."), done
    left = stored_files(media_root)
    assert not [p for p in left if "15551234567" in str(p)] and others_files
    assert [p for p in left if "1555123456/" in str(p)], "the other sender's media must stay"
    assert say(gateway_app, "MY DATA", from_number=long_)[0].startswith("I keep nothing of yours.")
    [audit] = [r for r in caplog.records if r.name == "gateway.audit"]
    assert (audit.getMessage(), audit.media, audit.by, audit.sender) == ("privacy erase", 2, "user", "*******4567")


def test_delete_all_without_a_recent_delete_asks_again(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path
) -> None:
    send_voice(gateway_app, media_server, voice_note)
    before = stored_files(media_root)
    assert "DELETE ALL within 10 minutes" in say(gateway_app, "DELETE ALL")[0]  # no DELETE before it
    # A DELETE 11 minutes ago (the marker's time is the injected clock): too old, asked again.
    store = FilesystemStore(media_root)
    store.set_marker("erase_requested", SENDER_ID, datetime.now(UTC) - timedelta(minutes=11))
    assert "DELETE ALL within 10 minutes" in say(gateway_app, "DELETE ALL")[0]
    assert stored_files(media_root) == before
    # ... and that answer is itself the new DELETE: confirming now erases.
    assert say(gateway_app, "DELETE ALL")[0].startswith("Done: I erased 1 file")


def test_an_unsigned_or_forged_delete_all_is_refused(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path
) -> None:
    send_voice(gateway_app, media_server, voice_note)
    say(gateway_app, "DELETE")
    before = stored_files(media_root)
    client = gateway_app.test_client()
    form = media_form(Body="DELETE ALL")
    assert client.post("/whatsapp", data=form).status_code == 403
    assert signed_post(client, form, token="not-the-auth-token").status_code == 403
    assert stored_files(media_root) == before


# -- no resurrection --------------------------------------------------------------------------------------


def test_erase_during_an_in_flight_voice_note_leaves_nothing(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path
) -> None:
    send_voice(gateway_app, media_server, voice_note)  # something to erase, and the notice out of the way
    replies: list[list[str]] = []
    # The download takes 2 s; the erase happens while it runs, so the item stores after the erase is done.
    in_flight = threading.Thread(target=lambda: replies.append(
        send_voice(gateway_app, media_server, voice_note, delay_s=2.0)))
    in_flight.start()
    say(gateway_app, "DELETE")
    erased = say(gateway_app, "DELETE ALL")[0]
    in_flight.join(timeout=30)
    assert erased.startswith("Done: I erased 1 file"), erased
    assert replies == [["You asked me to erase your data after sending this voice message, so I didn't keep it."]]
    assert media_files(media_root) == []
    assert not [p for p in stored_files(media_root) if not p.name.endswith(".tmp")]


def test_erase_drops_what_is_spooled_for_retry_here_and_elsewhere(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, voice_note: Path,
    media_root: Path, tmp_path: Path,
) -> None:
    down = make_gateway()  # the audio service is down: the voice note is spooled for a retry
    spool_dir = media_root.parent / "spool"
    [reply] = send_voice(down, media_server, voice_note)[:1]
    assert reply == "Got your voice message: I'll save it shortly."
    [message_sid] = spooled(media_root)
    # The same entry in another gateway host's spool, which this erase cannot reach.
    elsewhere = tmp_path / "other-host-spool"
    (elsewhere / "failed").mkdir(parents=True)
    (elsewhere / f"{message_sid}.spool").write_bytes((spool_dir / f"{message_sid}.spool").read_bytes())

    say(down, "DELETE")
    assert say(down, "DELETE ALL")[0].startswith("Done: I erased 0 files")
    assert spooled(media_root) == []  # this host's entry is gone

    # The other host's worker retries it with the audio service back: it is dropped, never stored.
    settings = Settings.from_env({k: str(v) for k, v in gateway_env(media_root, AUDIO_SERVICE_ADDR=audio_server,
                                                                    SPOOL_DIR=elsewhere).items()})
    services = Services.from_settings(settings)
    try:
        other = Spool(elsewhere)
        lease = other.lease(message_sid)
        assert lease is not None
        attempt = Attempts(services.processor, Backoff(1, 2), 3600).attempt(lease, Budget(30), skip_finals=True)
    finally:
        services.close()
    assert [r.outcome for r in attempt.results.values()] == ["erased"] and not attempt.will_retry
    assert media_files(media_root) == [] and list(elsewhere.glob("*.spool")) == []


# -- the operator's commands ------------------------------------------------------------------------------


def media_command(media_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "STORAGE"))},
           "STORAGE": "filesystem", "MEDIA_ROOT": str(media_root), "SPOOL_DIR": str(media_root.parent / "spool"),
           "LOG_LEVEL": "INFO"}
    return subprocess.run([sys.executable, "-m", "gateway.media", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_export_holds_exactly_what_my_data_counts_and_delete_erases_it(
    gateway_app: Flask, media_server: MediaServer, voice_note: Path, media_root: Path, tmp_path: Path
) -> None:
    send_voice(gateway_app, media_server, voice_note)
    send_voice(gateway_app, media_server, voice_note)
    [my_data] = say(gateway_app, "MY DATA")
    usage = Usage.of(FilesystemStore(media_root).list(SENDER_ID))
    assert usage.describe() in my_data

    out = tmp_path / "export.zip"
    exported = media_command(media_root, "export", "--sender", SENDER, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(out) as archive:
        names = sorted(archive.namelist())
        wavs = [n for n in names if n.endswith(".wav")]
        assert len(wavs) == usage.voice_messages == 2 and len(names) == 2 * usage.files
        assert sum(archive.getinfo(n).file_size for n in wavs) == usage.total_bytes
        for wav in wavs:
            assert archive.read(wav)[:4] == b"RIFF"
            assert json.loads(archive.read(f"{wav}.json"))["sender_id"] == SENDER_ID
    audit = [json.loads(line) for line in exported.stdout.splitlines() + exported.stderr.splitlines()
             if '"privacy export"' in line]
    assert [(a["sender"], a["media"], a["by"]) for a in audit] == [("*******4567", 2, "cli")]

    refused = media_command(media_root, "delete", "--sender", SENDER)  # without --yes: says what, erases nothing
    assert refused.returncode == 1 and "2 voice messages and 0 photos" in refused.stderr
    assert len(media_files(media_root)) == 4
    deleted = media_command(media_root, "delete", "--sender", SENDER, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "erased 2 files" in deleted.stderr and media_files(media_root) == []
    assert '"by": "cli"' in deleted.stdout + deleted.stderr


# -- retention in the worker ------------------------------------------------------------------------------


def _old_voice(media_root: Path, days: float) -> str:
    store = FilesystemStore(media_root)
    stored, _ = store.put(MediaRef(SENDER_ID, AUDIO, "MM" + os.urandom(16).hex(), 0), b"RIFF", content_type="audio/wav",
                          metadata={}, received_at=datetime.now(UTC) - timedelta(days=days))
    return stored.key


def test_the_worker_sweeps_at_most_once_per_interval(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "media")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    for days in (10, 3):
        store.put(MediaRef(SENDER_ID, AUDIO, "MM" + f"{days:032x}", 0), b"RIFF", content_type="audio/wav",
                  metadata={}, received_at=now - timedelta(days=days))
    spool = Spool(tmp_path / "spool")
    retention = Privacy(store, SpoolEraser(spool), retention_days=7, clock=lambda: now)
    worker = SpoolWorker(spool, None, poll_s=1, attempt_budget_s=1,  # type: ignore[arg-type]
                         housekeeping=PrivacySweep(retention, expire_media=True, erasure_memory=timedelta(days=1),
                                                   sweep_every_s=3600))
    assert worker.sweep_if_due(now=100.0) == 1
    store.put(MediaRef(SENDER_ID, AUDIO, "MM" + f"{99:032x}", 0), b"RIFF", content_type="audio/wav",
              metadata={}, received_at=now - timedelta(days=30))
    assert worker.sweep_if_due(now=200.0) == 0  # not due yet
    assert worker.sweep_if_due(now=3700.0) == 1
    assert len(store.list(SENDER_ID)) == 1


@pytest.mark.slow
def test_the_worker_process_expires_old_media_on_the_filesystem(media_root: Path) -> None:
    """`python -m gateway.intake.worker` with RETENTION_DAYS: what is older goes, what is younger stays."""
    old, young = _old_voice(media_root, days=3), _old_voice(media_root, days=1)
    env = {**os.environ, **{k: str(v) for k, v in gateway_env(media_root, RETENTION_DAYS="2").items()}}
    worker = subprocess.Popen([sys.executable, "-m", "gateway.intake.worker"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        store = FilesystemStore(media_root)
        while datetime.now(UTC) < deadline and len(store.list(SENDER_ID)) != 1:
            threading.Event().wait(0.2)
        assert [o.key for o in store.list(SENDER_ID)] == [young], old
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
    assert '"expired old media"' in output and '"expired": 1' in output, output


def test_markers_that_name_a_sender_are_forgotten_when_no_longer_needed(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    store.set_marker("erased", "15550000001", now - timedelta(hours=30))  # every retry of before it is over
    store.set_marker("erased", "15550000002", now - timedelta(hours=2))  # retries may still come: keep
    store.set_marker("erase_requested", "15550000003", now - timedelta(minutes=11))
    store.set_marker("erase_requested", "15550000004", now - timedelta(minutes=9))
    store.set_marker("noticed", "15550000005", now - timedelta(days=40))
    store.set_marker("noticed", "15550000006", now - timedelta(days=3))
    keep_notices = Privacy(store, None, clock=lambda: now)  # no RETENTION_DAYS: notices are kept
    assert keep_notices.forget_old_markers(timedelta(hours=25)) == 2
    assert set(store.markers("erased")) == {"15550000002"} and set(store.markers("erase_requested")) == {"15550000004"}
    assert Privacy(store, None, retention_days=30, clock=lambda: now).forget_old_markers(timedelta(hours=25)) == 1
    assert set(store.markers("noticed")) == {"15550000006"}


def test_with_the_storage_down_commands_say_so_and_nothing_is_erased(
    make_gateway: Callable[..., Flask], audio_server: str, running_s3: SeaweedS3, s3_bucket: str,
    media_server: MediaServer, voice_note: Path,
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, MINIO_RETRIES="0", **running_s3.gateway_env(s3_bucket))
    send_voice(app, media_server, voice_note)
    say(app, "DELETE")
    running_s3.kill()
    assert say(app, "DELETE ALL") == [replies.PRIVACY_UNAVAILABLE]
    assert say(app, "MY DATA") == [replies.PRIVACY_UNAVAILABLE]
    # A first contact while the store is down: the notice cannot be decided, so it is not sent yet...
    assert say(app, "hello", from_number=OTHER) == [replies.HELP]
    running_s3.start()
    [reply] = say(app, "MY DATA")
    assert reply.startswith("I keep 1 voice message and 0 photos ("), reply
    assert len(say(app, "hello", from_number=OTHER)) == 2  # ...but with the next message
