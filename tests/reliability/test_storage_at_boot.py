"""S3 down when the gateway and the worker start: both start, webhooks are kept, and what arrived meanwhile
is stored exactly once when S3 is back. The worker's /healthz and /metrics over real HTTP.

Real SeaweedFS (tests/fixtures/s3.py), the real app, a real audio service, the real worker process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from gateway import replies
from gateway.intake.spool import Spool
from gateway.intake.worker_http import Heartbeat, serve_worker_http
from gateway.storage.keys import AUDIO
from tests.fixtures.gateway import (
    SENDER_ID, MediaServer, free_port, media_form, reply_of, signed_post, spooled,
)
from tests.fixtures.s3 import SeaweedS3
from tests.reliability.test_worker import worker_for

REPO = Path(__file__).resolve().parents[2]
# Short S3 timeouts: a stopped server is a refused connection anyway, but no test should wait on retries.
FAST_S3 = {"MINIO_CONNECT_TIMEOUT_S": "0.5", "MINIO_READ_TIMEOUT_S": "2", "MINIO_RETRIES": "0",
           "HEALTH_CHECK_TIMEOUT_S": "0.5"}


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_gateway_starts_with_s3_down_and_stores_what_came_meanwhile_once_it_is_back(
    make_gateway: Callable[..., Flask], audio_server: str, running_s3: SeaweedS3, s3_bucket: str,
    media_server: MediaServer, voice_note: Path, media_root: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    env = running_s3.gateway_env(s3_bucket, **FAST_S3)
    running_s3.stop()
    with caplog.at_level(logging.WARNING, logger="gateway.storage.s3"):
        app = make_gateway(**env)  # no StoreStartupError: the bucket is checked on first use
    assert any(r.getMessage().startswith("storage unreachable") for r in caplog.records)
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["dependencies"]["storage"] == "UNAVAILABLE"

    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(client, form)) == replies.RECEIVED_VOICE  # kept, "I'll save it shortly"
    assert spooled(media_root) == [form["MessageSid"]]

    running_s3.start()
    worker = worker_for(app, audio_addr=audio_server)
    deadline = time.monotonic() + 60
    while spooled(media_root) and time.monotonic() < deadline:
        worker.run_once()
        time.sleep(0.2)
    assert spooled(media_root) == []
    store = app.extensions["mediabot"].store
    (stored,) = store.list(SENDER_ID, AUDIO)
    assert stored.key.endswith(f"_{form['MessageSid']}_0.wav")
    objects = [o.object_name for o in running_s3.client().list_objects(s3_bucket, recursive=True)]
    assert [name for name in objects if name.endswith(".wav")] == [stored.key]  # exactly once
    assert client.get("/readyz").json["dependencies"]["storage"] == "SERVING"


def test_refused_credentials_do_not_stop_start_up_and_are_reported(
    make_gateway: Callable[..., Flask], s3_server: SeaweedS3, s3_bucket: str, media_server: MediaServer,
    voice_note: Path, media_root: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the server answers, a wrong key or a missing bucket is not an outage to wait out quietly: an ERROR
    line each check, /readyz names it, and the webhooks are still kept."""
    with caplog.at_level(logging.ERROR, logger="gateway.storage.s3"):
        app = make_gateway(**s3_server.gateway_env(s3_bucket, MINIO_SECRET_KEY="not-the-secret", **FAST_S3))
    (line,) = [r for r in caplog.records if r.getMessage().startswith("storage refuses the gateway")]
    assert "refused MINIO_SECRET_KEY" in line.error and line.storage == "ACCESS_DENIED"
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["dependencies"]["storage"] == "ACCESS_DENIED"
    url = media_server.add("/media/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    form = media_form([(url, "audio/ogg")])
    assert reply_of(signed_post(client, form)) == replies.RECEIVED_VOICE
    assert spooled(media_root) == [form["MessageSid"]]

    missing = make_gateway(**s3_server.gateway_env("no-such-bucket-here", create_bucket=False, **FAST_S3))
    assert missing.test_client().get("/readyz").json["dependencies"]["storage"] == "NO_BUCKET"


def test_the_worker_process_starts_with_s3_down_and_serves_healthz_and_metrics(
    running_s3: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    env = {key: str(value) for key, value in running_s3.gateway_env(s3_bucket, **FAST_S3).items()}
    running_s3.stop()
    port = free_port()
    env.update({"SPOOL_DIR": str(tmp_path / "spool"), "SPOOL_POLL_S": "0.1", "WORKER_METRICS_PORT": str(port),
                "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    process = subprocess.Popen([sys.executable, "-m", "gateway.intake.worker"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        status, body = 0, b""
        while time.monotonic() < deadline:
            assert process.poll() is None, "the worker exited while S3 was down"
            try:
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200 and json.loads(body)["status"] == "alive"
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        text = body.decode()
        assert "mediabot_gateway_spool_depth 0.0" in text
        assert "mediabot_worker_last_pass_age_seconds" in text
        assert 'mediabot_gateway_media_outcomes_total{media_type="audio",outcome="retried"}' in text
        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = process.stdout.read() if process.stdout else ""
    assert "storage unreachable" in output and "spool worker stopped" in output


def test_worker_healthz_follows_the_heartbeat_and_asks_nothing_else(tmp_path: Path) -> None:
    now = [1000.0]
    heartbeat = Heartbeat(stale_after_s=5.0, clock=lambda: now[0])
    spool = Spool(tmp_path / "spool")
    server = serve_worker_http(0, heartbeat, spool, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body) == {"status": "alive", "last_pass_s_ago": 0.0, "stale_after_s": 5.0}
        now[0] += 6  # the loop has not passed for longer than its limit: stuck
        status, body = get(f"{base}/healthz")
        assert status == 503 and json.loads(body)["status"] == "stalled"
        assert "mediabot_worker_last_pass_age_seconds 6.0" in get(f"{base}/metrics")[1].decode()
        heartbeat.beat()
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/other")[0] == 404
    finally:
        server.close()


def test_one_stuck_loop_of_several_makes_the_worker_stalled() -> None:
    """WORKER_CONCURRENCY runs several loops; the messages a stuck one holds wait with it, so its age counts."""
    now = [1000.0]
    heartbeat = Heartbeat(stale_after_s=5.0, clock=lambda: now[0])
    stuck = threading.Thread(target=heartbeat.beat)  # a loop that beat once, then hung
    stuck.start()
    stuck.join()
    now[0] += 4
    heartbeat.beat()  # another loop keeps passing
    assert heartbeat.alive() and heartbeat.age_s() == 4.0
    now[0] += 2
    heartbeat.beat()
    assert not heartbeat.alive() and heartbeat.age_s() == 6.0
