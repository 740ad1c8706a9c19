"""The spool worker against the real app and audio service: retries what failed, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flask import Flask

from gateway import replies
from gateway.intake.attempt import Attempts
from gateway.intake.spool import Backoff, Spool
from gateway.intake.worker import SpoolWorker
from gateway.processing import MediaProcessor
from gateway.whatsapp.form import parse_webhook
from tests.fixtures.gateway import MediaServer, media_files, media_form, reply_of, signed_post, spooled

REPO = Path(__file__).resolve().parents[2]


def worker_for(app: Flask, *, give_up_after_s: float = 3600.0, audio_addr: str | None = None,
               max_attempts: int = 20, tell: bool = False) -> SpoolWorker:
    """A worker on the app's spool, its processor dialing ``audio_addr`` (the service as it is now); ``tell``:
    it sends deferred answers through the app's ``services.deferred``, as `python -m gateway.intake.worker` does."""
    import grpc

    from gateway.audio_client import AudioClient

    services = app.extensions["mediabot"]
    processor: MediaProcessor = services.processor
    if audio_addr is not None:
        processor = MediaProcessor(
            downloader=services.downloader, store=services.store,
            audio=AudioClient(grpc.insecure_channel(audio_addr)),
            vision=processor._vision, audio_timeout_s=10, vision_timeout_s=10,  # noqa: SLF001
            max_media_bytes=services.settings.max_media_bytes,
        )
    attempts = Attempts(processor, Backoff(0.01, 0.02), give_up_after_s, max_attempts=max_attempts)
    return SpoolWorker(Spool(services.settings.spool_dir), attempts, poll_s=0.05, attempt_budget_s=20,
                       deferred=services.deferred if tell else None)


def test_what_failed_in_the_webhook_is_finished_by_the_worker(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path,
) -> None:
    app = make_gateway()  # the audio service is down for the webhook
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    photo = media_server.add("/media/doc", body=b"%PDF", content_type="application/pdf")
    form = media_form([(url, "audio/ogg"), (photo, "application/pdf")])
    text = reply_of(signed_post(app.test_client(), form))
    assert text == f"1. {replies.RECEIVED_VOICE}\n2. {replies.unsupported('documents')}"
    assert spooled(media_root) == [form["MessageSid"]] and media_files(media_root) == []

    worker = worker_for(app, audio_addr=audio_server)  # the service is back
    deadline = time.monotonic() + 30
    while spooled(media_root) and time.monotonic() < deadline:
        worker.run_once()
        time.sleep(0.05)
    assert spooled(media_root) == []
    assert [p.suffix for p in media_files(media_root)] == [".wav", ".json"]
    # A delivery after the worker finished finds the stored object: no second one.
    assert reply_of(signed_post(app.test_client(), form)).startswith("1. Saved your voice message (")
    assert len(media_files(media_root)) == 2 and spooled(media_root) == []


def test_an_entry_written_by_the_version_before_is_still_finished(
    make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer, media_root: Path,
    voice_note: Path,
) -> None:
    """An upgrade with entries on disk loses nothing: line 1 as the version before wrote it (the Twilio form,
    no parsed message) is read with the parser of then, and the worker converts and stores the voice note."""
    app = make_gateway()
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    spool_dir = app.extensions["mediabot"].settings.spool_dir
    line_1 = {"message_sid": form["MessageSid"], "received_at": "2026-01-02T03:04:05+00:00", "form": form}
    (spool_dir / f"{form['MessageSid']}.spool").write_text(json.dumps(line_1, separators=(",", ":")) + "\n")

    assert worker_for(app, audio_addr=audio_server).run_once() == 1
    assert spooled(media_root) == []
    [wav, _] = media_files(media_root)
    assert wav.name == f"20260102T030405Z_{form['MessageSid']}_0.wav" and "15551234567" in str(wav)


def test_a_final_outcome_is_not_retried(
    make_gateway: Callable[..., Flask], media_server: MediaServer, media_root: Path
) -> None:
    app = make_gateway()
    url = media_server.add("/media/gone", body=b"", content_type="audio/ogg", statuses=(404,))
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == "Sorry, I couldn't download your voice message."
    assert spooled(media_root) == []  # final at once: nothing left for the worker


def test_an_entry_still_failing_after_the_give_up_time_is_moved_aside(
    make_gateway: Callable[..., Flask], media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    app = make_gateway()  # the audio service stays down
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(app.test_client(), form)) == replies.RECEIVED_VOICE
    worker = worker_for(app, give_up_after_s=0.5)
    time.sleep(1.1)  # past the give-up time and the webhook's first backoff (SPOOL_RETRY_BASE_S 1: 0.5-1 s)
    assert worker.run_once() == 1
    spool = Spool(media_root.parent / "spool")
    assert spool.depth() == 0 and [p.stem for p in spool.failed()] == [form["MessageSid"]]


def test_worker_process_exits_on_sigterm_and_leaves_the_spool_for_the_next_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    sid = "MM" + "cd" * 16
    form = {"MessageSid": sid, "From": "whatsapp:+15551234567", "NumMedia": "1",
            "MediaUrl0": "http://127.0.0.1:9/x", "MediaContentType0": "audio/ogg"}
    from datetime import UTC, datetime

    spool.add(parse_webhook(form), datetime.now(UTC)).release()
    env = {"SPOOL_DIR": str(spool.directory), "MEDIA_ROOT": str(tmp_path / "media"), "STORAGE": "filesystem",
           "MEDIA_HOST_ALLOWLIST": "127.0.0.1", "SPOOL_RETRY_BASE_S": "30", "SPOOL_RETRY_MAX_S": "60",
           "SPOOL_POLL_S": "0.1", "PATH": "/usr/bin:/bin"}
    (tmp_path / "media").mkdir()
    process = subprocess.Popen([sys.executable, "-m", "gateway.intake.worker"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lease = spool.lease(sid)
            if lease is not None and lease.entry.attempts >= 1:  # resumed on start, tried once, rescheduled
                lease.release()
                break
            if lease is not None:
                lease.release()
            time.sleep(0.1)
        else:
            raise AssertionError("the worker never tried the spooled entry")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = process.stdout.read() if process.stdout else ""
    assert "spool worker stopped" in output
    assert spool.depth() == 1  # still owed: the next start resumes it


def test_backoff_settings_come_from_the_environment(tmp_path: Path) -> None:
    from gateway.config import Settings
    from mediabot.config import ConfigError

    settings = Settings.from_env({"SPOOL_DIR": str(tmp_path), "SPOOL_RETRY_BASE_S": "2", "SPOOL_RETRY_MAX_S": "9"})
    assert (settings.spool_dir, settings.spool_retry_base_s, settings.spool_retry_max_s) == (tmp_path, 2.0, 9.0)
    assert replace(settings).spool_poll_s == 1.0
    try:
        Settings.from_env({"SPOOL_RETRY_BASE_S": "10", "SPOOL_RETRY_MAX_S": "1"})
    except ConfigError as error:
        assert "SPOOL_RETRY_MAX_S" in str(error)
    else:
        raise AssertionError("a maximum below the base was accepted")
