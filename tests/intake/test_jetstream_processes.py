"""The JetStream worker and `make run`'s NATS launcher as real processes: the worker starts while NATS is
down and works once it is up, SIGTERM stops it cleanly; the launcher runs nats-server only for jetstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from bench.nats_server import NatsServer
from gateway import replies
from tests.fixtures.gateway import MediaServer, free_port, media_files, media_form, reply_of, signed_post

REPO = Path(__file__).resolve().parents[2]


def logged(log: Path, message: str) -> bool:
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        try:
            if json.loads(line).get("msg") == message:
                return True
        except (json.JSONDecodeError, AttributeError):
            continue
    return False


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def test_the_worker_starts_without_nats_works_once_it_is_up_and_stops_on_sigterm(
    tmp_path: Path, make_gateway: Callable[..., Flask], audio_server: str, media_server: MediaServer,
    voice_note: Path, media_root: Path,
) -> None:
    nats = NatsServer(root=tmp_path / "nats", port=free_port(), monitor_port=free_port())  # not started yet
    env_overrides = {"INTAKE": "jetstream", "NATS_URL": nats.url, "AUDIO_SERVICE_ADDR": audio_server,
                     "WEBHOOK_BUDGET_S": "10"}
    from tests.fixtures.gateway import gateway_env

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PUBLIC_BASE_URL"))},
           **{k: str(v) for k, v in gateway_env(media_root, **env_overrides).items()}}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "gateway.intake.worker"], cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: logged(log, "NATS unreachable; the worker keeps trying"), 30, "the worker to wait", log)
        assert logged(log, "jetstream worker started") and worker.poll() is None
        nats.start()
        wait_for(lambda: logged(log, "NATS reachable again"), 30, "the worker to connect", log)

        app = make_gateway(**env_overrides)
        url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
        text = reply_of(signed_post(app.test_client(), media_form([(url, "audio/ogg")])))
        assert text.startswith("Saved your voice message (") or text == replies.RECEIVED_VOICE
        wait_for(lambda: len(media_files(media_root)) == 2, 30, "the voice note stored", log)  # WAV + sidecar

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert logged(log, "jetstream worker stopped")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        nats.stop()


def test_make_runs_nats_launcher_waits_quietly_on_the_spool_and_runs_nats_for_jetstream(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INTAKE", "NATS_"))}
    launcher = [sys.executable, "-m", "gateway.intake.nats_local"]

    idle = subprocess.Popen(launcher, cwd=REPO, env=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(1.5)
    assert idle.poll() is None  # honcho would stop everything if it exited
    idle.send_signal(signal.SIGINT)  # Ctrl-C, as honcho forwards it
    assert idle.wait(timeout=10) == 0

    port = free_port()
    env = {**base, "INTAKE": "jetstream", "NATS_URL": f"nats://127.0.0.1:{port}", "NATS_STORE_DIR": str(tmp_path / "js")}
    server = subprocess.Popen(launcher, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from gateway.config import Settings
        from gateway.intake.jetstream import JetStreamQueue
        from gateway.intake.jetstream_intake import jetstream_settings

        queue = JetStreamQueue(jetstream_settings(Settings.from_env(env)))
        try:
            deadline = time.monotonic() + 20
            while not queue.ready():
                assert time.monotonic() < deadline and server.poll() is None, "nats-server did not come up"
                time.sleep(0.2)
        finally:
            queue.close()
        assert (tmp_path / "js" / "jetstream").is_dir()  # the store where NATS_STORE_DIR says
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
