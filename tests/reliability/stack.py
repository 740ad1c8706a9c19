"""The whole system as real processes on loopback, each one killable and restartable on its port.

Triton and the S3 server come from the session fixtures (tests.fixtures.triton / .s3), NATS from
tests.fixtures.nats when INTAKE=jetstream; the audio and vision services, the gateway (gunicorn, 2 workers)
and its worker are started here, each in its own
process group, so ``kill()`` is a real kill -9 of the process and its children (gunicorn's workers,
ffmpeg) and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.gateway import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN
from tests.fixtures.vision import NOT_SERVING, SERVING, health_status
from bench.support import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Proc:
    """One service process: started, killed (-9, whole group), stopped (SIGTERM) and started again."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, timeout_s: float = 120.0) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}\n{self.tail()}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10)

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM to the group and wait; SIGKILL if it does not exit within ``grace_s``."""
        return self._signal(signal.SIGTERM, grace_s)

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name}\n" + (self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "")

    def _signal(self, signum: int, wait_s: float) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        try:  # whatever the leader left in its group (gunicorn workers after a kill -9 of the master)
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return process.returncode


def grpc_serving(address: str) -> Callable[[], bool]:
    return lambda: health_status(address) == SERVING


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except urllib.error.URLError:
            return False

    return check


def audio_proc(tmp: Path) -> Proc:
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "AUDIO_LISTEN": address, "AUDIO_GRACE_S": "1", "LOG_LEVEL": "INFO"}
    return Proc("audio", [sys.executable, "-m", "audio_service"], env, tmp / "audio.log", grpc_serving(address))


def vision_proc(tmp: Path, triton_grpc_url: str) -> Proc:
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "VISION_LISTEN": address, "TRITON_URL": triton_grpc_url, "VISION_GRACE_S": "1",
           "LOG_LEVEL": "INFO"}
    # Ready when it answers at all: while Triton restarts it is up but NOT_SERVING, and that is the point.
    return Proc("vision", [sys.executable, "-m", "vision_service"], env, tmp / "vision.log",
                lambda: health_status(address) in (SERVING, NOT_SERVING))


def gateway_env(*, audio_addr: str, vision_addr: str, s3_env: Mapping[str, object], spool_dir: Path,
                port: int, twilio_api_base_url: str = "") -> dict[str, str]:
    """The gateway's and worker's environment. ``twilio_api_base_url``: where deferred WhatsApp answers are
    sent (tests.fixtures.twilio_api); without it they go to api.twilio.com, unreachable here (logged)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TWILIO_", "PUBLIC_BASE_URL"))}
    env.update({key: str(value) for key, value in s3_env.items()})
    env.update({
        "GATEWAY_PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
        "MEDIA_HOST_ALLOWLIST": "127.0.0.1",
        "AUDIO_SERVICE_ADDR": audio_addr,
        "VISION_SERVICE_ADDR": vision_addr,
        "SPOOL_DIR": str(spool_dir),
        # Short enough that a test sees several retries and the spool drains soon after the faults end.
        "SPOOL_RETRY_BASE_S": "0.5",
        "SPOOL_RETRY_MAX_S": "4",
        "SPOOL_POLL_S": "0.2",
        "WEBHOOK_BUDGET_S": "8",
        "MINIO_CONNECT_TIMEOUT_S": "1",
        "MINIO_READ_TIMEOUT_S": "5",
        "MINIO_RETRIES": "0",
        "MEDIA_404_RETRY_DELAYS_S": "0.2",
        "LOG_LEVEL": "INFO",
        "TRUST_PROXY": "0",
    })
    if twilio_api_base_url:
        env["TWILIO_API_BASE_URL"] = twilio_api_base_url
    return env


def jetstream_env(nats_url: str) -> dict[str, str]:
    """What INTAKE=jetstream adds to ``gateway_env``: the server, and a short ack wait so a worker killed
    mid-attempt has its delivery handed on within the test (the spool's flock does that at once)."""
    return {"INTAKE": "jetstream", "NATS_URL": nats_url, "NATS_ACK_WAIT_S": "5"}


# The worker's first line once its loop runs, per INTAKE (the JetStream one does not wait for NATS).
WORKER_STARTED = {"spool": "spool worker started", "jetstream": "jetstream worker started"}


def gateway_procs(tmp: Path, env: dict[str, str]) -> tuple[Proc, Proc]:
    port = env["GATEWAY_PORT"]
    gunicorn = Proc(
        "gateway",
        [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "8",
         "--timeout", "30", "--graceful-timeout", "15", "gateway:create_app()"],
        env, tmp / "gateway.log", http_ok(f"http://127.0.0.1:{port}/healthz"),
    )
    worker = Proc("worker", [sys.executable, "-m", "gateway.intake.worker"], env, tmp / "worker.log",
                  lambda: _logged(tmp / "worker.log", WORKER_STARTED[env.get("INTAKE", "spool")]))
    return gunicorn, worker


def _logged(log: Path, message: str) -> bool:
    return log.exists() and any(_message(line) == message for line in log.read_text(errors="replace").splitlines())


def _message(line: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("msg") if isinstance(record, dict) else None


def count_logged(logs: list[Path], message: str) -> int:
    return sum(
        1 for log in logs if log.exists()
        for line in log.read_text(errors="replace").splitlines() if _message(line) == message
    )


@dataclass
class Figures:
    latencies_s: list[float] = field(default_factory=list)
    redeliveries: int = 0
    server_errors: int = 0
    # MessageSid -> the reply the user got (the 200's text): deferred ("shortly") or final.
    replies: dict[str, str] = field(default_factory=dict)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
