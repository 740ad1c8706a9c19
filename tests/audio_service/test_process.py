"""``python -m audio_service`` as deployed: JSON logs, and SIGTERM letting an in-flight conversion finish."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mediabot.limits import client_channel_options
from mediabot.v1 import audio_pb2, audio_pb2_grpc
from tests.audio_service.helpers import child_processes, wait_until
from tests.fixtures.audio import make_silence_flac

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """The service as a child process, with its log lines collected by a reader thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "audio_service"], cwd=REPO_ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[dict[str, object]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, msg: str, timeout: float = 20) -> dict[str, object]:
        while True:
            line = self.lines.get(timeout=timeout)
            entry = json.loads(line)  # every line must be JSON
            self.log.append(entry)
            if entry["msg"] == msg:
                return entry


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {**os.environ, "AUDIO_LISTEN": "127.0.0.1:0", "AUDIO_GRACE_S": "30", "AUDIO_TMP_DIR": str(tmp_path)}
    service = ServiceProcess(env)
    try:
        yield service
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
        service.proc.wait()


def test_sigterm_drains_the_call_in_flight(service: ServiceProcess, tmp_path: Path) -> None:
    port = service.wait_for("audio service listening")["port"]
    nearly_15_min = make_silence_flac(tmp_path, 899).read_bytes()
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=client_channel_options()) as channel:
        stub = audio_pb2_grpc.AudioServiceStub(channel)
        call = stub.ConvertToWav.future(
            audio_pb2.ConvertToWavRequest(audio=nearly_15_min, content_type="audio/flac", request_id="drain/0"),
            timeout=60,
        )
        assert wait_until(lambda: bool(child_processes(service.proc.pid, "ffmpeg")))
        service.proc.send_signal(signal.SIGTERM)

        reply = call.result()
    assert reply.duration_ms == 899_000
    assert service.proc.wait(timeout=30) == 0
    service.wait_for("audio service stopped")
    messages = [(entry["msg"], entry.get("request_id")) for entry in service.log]
    # The signal arrived first, and the conversion still completed after it.
    assert messages.index(("audio service stopping", None)) < messages.index(("audio converted", "drain/0"))
    converted = next(entry for entry in service.log if entry.get("request_id") == "drain/0")
    assert converted["outcome"] == "OK" and converted["source_codec"] == "flac"
    assert list(tmp_path.glob("audio-*")) == []


def test_bad_configuration_exits_with_a_readable_message() -> None:
    """One JSON line naming the variable, exit status 2, no traceback (tests/test_grpc_server.py: TLS too)."""
    env = {**os.environ, "AUDIO_MAX_DURATION_S": "forever"}
    result = subprocess.run([sys.executable, "-m", "audio_service"], cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    (line,) = result.stdout.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["msg"]) == ("ERROR", "bad configuration")
    assert "AUDIO_MAX_DURATION_S must be a number" in entry["error"]
    assert result.stderr == ""
