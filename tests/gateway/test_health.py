"""/healthz and /readyz against real gRPC health services."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from audio_service.config import Settings as AudioSettings
from audio_service.server import create_server
from gateway import GatewayStartupError
from tests.fixtures.s3 import SeaweedS3


@pytest.fixture
def audio_without_ffmpeg(audio_settings: AudioSettings) -> Iterator[str]:
    """A real audio service that cannot find ffmpeg, so its health is honestly NOT_SERVING."""
    server = create_server(replace(audio_settings, ffmpeg="/nonexistent/ffmpeg"))
    port = server.port
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def test_healthz_needs_nothing_else(make_gateway: Callable[..., Flask]) -> None:
    response = make_gateway().test_client().get("/healthz")  # both services down
    assert response.status_code == 200
    assert response.json == {"status": "alive"}


def test_readyz_names_the_dependency_that_is_down_and_stays_ready(gateway_app: Flask) -> None:
    response = gateway_app.test_client().get("/readyz")  # audio up, vision down
    assert response.status_code == 200  # a photo sent now is kept and checked once vision is back
    assert response.json == {
        "status": "ready",
        "dependencies": {"audio": "SERVING", "vision": "UNAVAILABLE", "storage": "SERVING", "intake": "SERVING"},
        "decided_by": "intake",
    }


def test_readyz_with_everything_down(make_gateway: Callable[..., Flask]) -> None:
    response = make_gateway(HEALTH_CHECK_TIMEOUT_S="0.5").test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json["dependencies"] == {
        "audio": "UNAVAILABLE", "vision": "UNAVAILABLE", "storage": "SERVING", "intake": "SERVING",
    }


def test_readyz_reports_a_service_that_answers_but_is_not_serving(
    make_gateway: Callable[..., Flask], audio_without_ffmpeg: str
) -> None:
    response = make_gateway(AUDIO_SERVICE_ADDR=audio_without_ffmpeg).test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json["dependencies"]["audio"] == "NOT_SERVING"


def test_readyz_reports_storage_that_went_away(make_gateway: Callable[..., Flask], media_root: Path) -> None:
    client = make_gateway().test_client()
    assert client.get("/readyz").json["dependencies"]["storage"] == "SERVING"
    media_root.rmdir()  # e.g. a volume unmounted under the running gateway
    response = client.get("/readyz")
    assert response.json["dependencies"]["storage"] == "MISSING"
    assert response.status_code == 200  # reported for people; the spool keeps what arrives meanwhile


def test_readyz_reports_a_spool_that_went_away(make_gateway: Callable[..., Flask]) -> None:
    app = make_gateway()
    client = app.test_client()
    spool_dir = app.extensions["mediabot"].settings.spool_dir
    assert client.get("/readyz").json["dependencies"]["intake"] == "SERVING"
    shutil.rmtree(spool_dir)  # e.g. the spool's volume unmounted: a message accepted now would not be kept
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["dependencies"]["intake"] == "NOT_SERVING" and response.json["decided_by"] == "intake"


def test_readyz_is_503_when_the_spool_cannot_be_written(make_gateway: Callable[..., Flask]) -> None:
    app = make_gateway()
    spool_dir = app.extensions["mediabot"].settings.spool_dir
    assert app.test_client().get("/readyz").status_code == 200
    # Read-only: nothing accepted now could be kept. Root ignores the mode bits, not the immutable flag.
    spool_dir.chmod(0o500)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            subprocess.run(["chattr", "+i", str(spool_dir)], check=True)
        response = app.test_client().get("/readyz")
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(spool_dir)], check=True)
        spool_dir.chmod(0o700)
    assert response.status_code == 503 and response.json["status"] == "not ready"
    assert response.json["dependencies"]["intake"] == "NOT_SERVING"


def test_readyz_is_200_with_audio_vision_and_s3_down(
    make_gateway: Callable[..., Flask], running_s3: SeaweedS3, s3_bucket: str
) -> None:
    env = running_s3.gateway_env(s3_bucket)
    running_s3.stop()
    app = make_gateway(HEALTH_CHECK_TIMEOUT_S="0.5", MINIO_CONNECT_TIMEOUT_S="0.5", MINIO_RETRIES="0", **env)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json == {
        "status": "ready",
        "dependencies": {"audio": "UNAVAILABLE", "vision": "UNAVAILABLE", "storage": "UNAVAILABLE",
                         "intake": "SERVING"},
        "decided_by": "intake",
    }


def test_the_gateway_does_not_start_with_a_spool_dir_it_cannot_use(
    make_gateway: Callable[..., Flask], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(GatewayStartupError, match=r"SPOOL_DIR .*a-file/spool cannot be used"):
        make_gateway(SPOOL_DIR=str(tmp_path / "a-file" / "spool"))
