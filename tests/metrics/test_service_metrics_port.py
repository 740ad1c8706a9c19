"""The audio service as `python -m audio_service` with AUDIO_METRICS_PORT: /metrics answers, and counts RPCs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audio_service.config import Settings as AudioSettings
from mediabot.config import ConfigError
from tests.fixtures.gateway import free_port
from vision_service.config import Settings as VisionSettings

REPO = Path(__file__).resolve().parents[2]


def test_audio_service_serves_metrics_on_its_metrics_port(tmp_path: Path) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    env = {**os.environ, "AUDIO_LISTEN": f"127.0.0.1:{grpc_port}", "AUDIO_METRICS_PORT": str(metrics_port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "audio.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "audio_service"], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            while True:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        assert ('grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health"}'
                in text), text[-2000:]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


@pytest.mark.parametrize("value", ["-1", "70000", "nine"])
def test_metrics_ports_are_validated(value: str) -> None:
    with pytest.raises(ConfigError, match="AUDIO_METRICS_PORT"):
        AudioSettings.from_env({"AUDIO_METRICS_PORT": value})
    with pytest.raises(ConfigError, match="VISION_METRICS_PORT"):
        VisionSettings.from_env({"VISION_METRICS_PORT": value})


def test_metrics_ports_are_off_by_default() -> None:
    assert AudioSettings.from_env({}).metrics_port == 0
    assert VisionSettings.from_env({}).metrics_port == 0
