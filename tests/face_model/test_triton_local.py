"""The local launcher: settings, the environment it gives tritonserver, and ``python -m face_model.triton_local``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from face_model.config import Settings
from face_model.triton_local import (
    TritonStartError,
    assemble_backend_directory,
    locate_triton,
    server_command,
    server_environment,
    wait_ready,
)
from bench.support import REPO_ROOT, free_port
from mediabot.config import ConfigError

IDENTITY_REPOSITORY = Path(__file__).parent / "identity_repository"


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    defaults = Settings.from_env({"MODEL_REPOSITORY": str(tmp_path)})
    assert (defaults.http_port, defaults.grpc_port, defaults.metrics_port) == (8000, 8001, 8002)
    assert defaults.bind_address == "127.0.0.1" and defaults.model_repository == tmp_path.resolve()
    custom = Settings.from_env(
        {
            "MODEL_REPOSITORY": str(tmp_path),
            "TRITON_HTTP_PORT": "9000",
            "TRITON_GRPC_PORT": "9001",
            "TRITON_METRICS_PORT": "9002",
            "TRITON_BIND_ADDRESS": "0.0.0.0",
            "LOG_LEVEL": "debug",
        }
    )
    assert (custom.http_port, custom.grpc_port, custom.metrics_port, custom.bind_address) == (9000, 9001, 9002, "0.0.0.0")
    assert custom.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRITON_GRPC_PORT": "http"}, "TRITON_GRPC_PORT"),
        ({"TRITON_HTTP_PORT": "70000"}, "TRITON_HTTP_PORT"),
        ({"TRITON_HTTP_PORT": "8001"}, "must differ"),
        ({"MODEL_REPOSITORY": "/nonexistent/models"}, "MODEL_REPOSITORY"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ],
)
def test_bad_settings_fail_with_the_variable_named(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"MODEL_REPOSITORY": str(tmp_path), **env})


def test_backend_directory_has_this_pythons_stub_and_is_idempotent(tmp_path: Path) -> None:
    installation = locate_triton()
    assert installation.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = assemble_backend_directory(tmp_path, installation)
    files = sorted(p.name for p in (backends / "python").iterdir())
    assert files == ["libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    mtime = (backends / "python" / "triton_python_backend_stub").stat().st_mtime_ns
    assemble_backend_directory(tmp_path, installation)
    assert (backends / "python" / "triton_python_backend_stub").stat().st_mtime_ns == mtime


def test_environment_points_the_stub_at_this_venv() -> None:
    installation = locate_triton()
    env = server_environment(installation, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    libraries = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libraries[:2] == [str(installation.libraries), sysconfig.get_config_var("LIBDIR")]
    assert libraries[-1] == "/opt/lib"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)


def test_command_binds_every_endpoint_to_the_given_address(tmp_path: Path) -> None:
    command = server_command(
        locate_triton(), tmp_path, tmp_path, http_port=1, grpc_port=2, metrics_port=3, address="127.0.0.1"
    )
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in command
    assert "--http-port=1" in command and "--grpc-port=2" in command and "--metrics-port=3" in command


def test_wait_ready_reports_a_server_that_never_comes() -> None:
    with pytest.raises(TritonStartError, match="not ready"):
        wait_ready(f"127.0.0.1:{free_port()}", 0.5)


def test_main_serves_and_forwards_sigterm(tmp_path: Path) -> None:
    """What `make run` starts: JSON logs, Triton on the configured loopback ports, clean exit on SIGTERM."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "TRITON_HTTP_PORT": str(http_port),
        "TRITON_GRPC_PORT": str(grpc_port),
        "TRITON_METRICS_PORT": str(metrics_port),
        "MODEL_REPOSITORY": str(IDENTITY_REPOSITORY),
        "TRITON_WORK_DIR": str(tmp_path / "work"),
    }
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "face_model.triton_local"], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(f"127.0.0.1:{http_port}", 240, process=launcher, log_path=log)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [r["msg"] for r in records if r.get("service") == "triton"]
    assert messages[0] == "tritonserver started" and "tritonserver exited" in messages
    started = next(r for r in records if r["msg"] == "tritonserver started")
    assert started["grpc"] == f"127.0.0.1:{grpc_port}"
    triton_pid = started["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(triton_pid, 0)


def test_main_refuses_bad_configuration() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "face_model.triton_local"],
        cwd=REPO_ROOT,
        env={**os.environ, "TRITON_GRPC_PORT": "grpc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "TRITON_GRPC_PORT" in json.loads(result.stdout.splitlines()[-1])["msg"]
