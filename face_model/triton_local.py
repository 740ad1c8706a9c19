"""Runs the real ``tritonserver`` that ships inside the nvidia-pytriton wheel, without PyTriton's Python API.

The wheel holds the server binary (``pytriton/tritonserver/bin``), its shared libraries
(``nvidia_pytriton.libs``), the python backend and one backend stub per Python version. This
module assembles a backend directory with the stub for the running interpreter, points the
dynamic linker at the wheel's libraries and at this interpreter's libpython (the stub embeds
Python), and gives the stub this environment's packages (torch, numpy, face_model) on PYTHONPATH.

``python -m face_model.triton_local`` is what ``make run`` starts; tests use ``start_triton`` and
``wait_ready`` through tests/fixtures/triton.py.
"""

from __future__ import annotations

import filecmp
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready; the message carries the end of its log."""


@dataclass(frozen=True)
class TritonInstallation:
    """The parts of the nvidia-pytriton wheel this launcher uses."""

    server: Path
    libraries: Path
    python_backend: Path
    stub: Path


def locate_triton() -> TritonInstallation:
    """Finds the wheel's files without importing pytriton (installed --no-deps, its imports would fail)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed: `pip install --no-deps nvidia-pytriton==0.7.0`")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstallation(
        server=root / "bin" / "tritonserver",
        libraries=package.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (found.server, found.libraries, found.python_backend, found.stub):
        if not path.exists():
            raise TritonStartError(f"{path} is missing from the nvidia-pytriton wheel (Python {version} stub needed)")
    return found


def _install_file(source: Path, target: Path) -> None:
    """Copies via a temporary file and a rename, so a concurrent launcher never runs a half-copied stub."""
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        shutil.copy2(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def assemble_backend_directory(work_dir: Path, installation: TritonInstallation | None = None) -> Path:
    """``work_dir/backends/python`` with the backend library, its utils module and this Python's stub.

    Triton looks for the stub next to libtriton_python.so; the wheel keeps stubs for several Python
    versions elsewhere, which is why the directory is assembled rather than used in place.
    """
    installation = installation or locate_triton()
    backends = work_dir / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _install_file(installation.python_backend / name, python_dir / name)
    _install_file(installation.stub, python_dir / "triton_python_backend_stub")
    return backends


def _prepend(paths: Sequence[str], existing: str | None) -> str:
    parts = [p for p in paths if p]
    if existing:
        parts.extend(p for p in existing.split(os.pathsep) if p and p not in parts)
    return os.pathsep.join(dict.fromkeys(parts))


def server_environment(installation: TritonInstallation, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python stubs need.

    - LD_LIBRARY_PATH: the wheel's bundled libraries, then this interpreter's LIBDIR, so the stub
      embeds the same libpython (same patch version and build) the venv's packages were installed for.
    - PATH and PYTHONPATH: see below; the stub must import torch and numpy from this venv and
      face_model from wherever this process imported it.
    """
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = _prepend([str(installation.libraries), libdir], env.get("LD_LIBRARY_PATH"))
    # The stub runs Python isolated (-I): PYTHONPATH and PYTHONHOME are ignored, but Python still
    # finds its prefix from the executable it resolves on PATH. With this venv's bin first, that is
    # the venv's python, whose pyvenv.cfg makes the venv's site-packages the stub's (PyTriton does the same).
    env["PATH"] = _prepend([str(Path(sys.executable).parent)], env.get("PATH"))
    # Still set for the stub's benefit: model.py adds these entries itself, so face_model imports
    # from a source checkout that is not pip-installed.
    env["PYTHONPATH"] = _prepend([str(Path(__file__).resolve().parent.parent)], env.get("PYTHONPATH"))
    return env


def server_command(
    installation: TritonInstallation,
    model_repository: Path,
    backend_directory: Path,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    address: str = "127.0.0.1",
) -> list[str]:
    return [
        str(installation.server),
        f"--model-repository={model_repository.resolve()}",
        f"--backend-directory={backend_directory.resolve()}",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        # Ready means every model in the repository loaded, not just "the process is up".
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--exit-timeout-secs=10",
        # config.pbtxt is complete; auto-completion would start an extra stub (and import torch) per model.
        "--disable-auto-complete-config",
    ]


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM if the launcher dies, so no Triton is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_triton(
    model_repository: Path,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    log_path: Path | None = None,
    work_dir: Path = Path(".triton"),
    address: str = "127.0.0.1",
) -> subprocess.Popen[bytes]:
    """Starts tritonserver in its own session (terminal signals reach it only through us).

    With ``log_path`` its stdout and stderr go to that file (appended), otherwise to ours.
    Returns at once; call ``wait_ready`` before using it.
    """
    installation = locate_triton()
    backends = assemble_backend_directory(work_dir.resolve(), installation)
    command = server_command(
        installation,
        model_repository,
        backends,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        address=address,
    )
    log_file: IO[bytes] | None = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
    try:
        return subprocess.Popen(
            command,
            env=server_environment(installation),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, safe before exec
        )
    finally:
        if log_file is not None:
            log_file.close()


def _log_tail(log_path: Path | None, lines: int = 40) -> str:
    if log_path is None or not log_path.is_file():
        return ""
    text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_ready(
    http_url: str,
    timeout: float,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    models: Sequence[str] = (),
) -> float:
    """Polls ``/v2/health/ready`` (and each model's ready endpoint) until 200; returns the seconds waited.

    Raises TritonStartError with the log's tail when the process exits or the timeout passes.
    """
    base = http_url.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    endpoints = [f"{base}/v2/health/ready", *(f"{base}/v2/models/{name}/ready" for name in models)]
    started = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise TritonStartError(f"tritonserver exited with code {process.returncode}\n{_log_tail(log_path)}")
        try:
            if all(_status(url) == 200 for url in endpoints):
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise TritonStartError(f"tritonserver not ready after {timeout:.0f} s\n{_log_tail(log_path)}")
        time.sleep(0.2)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL we built
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def stop_triton(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM (Triton unloads models and exits), then SIGKILL after ``timeout``; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def main() -> int:
    from face_model.config import Settings
    from mediabot.config import ConfigError
    from mediabot.logs import configure_logging

    configure_logging("triton")
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        logger.error("bad configuration: %s", error)
        return 2
    configure_logging("triton", settings.log_level)
    try:
        process = start_triton(
            settings.model_repository,
            http_port=settings.http_port,
            grpc_port=settings.grpc_port,
            metrics_port=settings.metrics_port,
            work_dir=settings.work_dir,
            address=settings.bind_address,
        )
    except TritonStartError as error:
        logger.error("cannot start tritonserver: %s", error)
        return 1
    logger.info(
        "tritonserver started",
        extra={
            "pid": process.pid,
            "grpc": f"{settings.bind_address}:{settings.grpc_port}",
            "http": f"{settings.bind_address}:{settings.http_port}",
            "metrics": f"{settings.bind_address}:{settings.metrics_port}",
            "model_repository": str(settings.model_repository),
        },
    )

    def forward(signum: int, _frame: FrameType | None) -> None:
        logger.info("forwarding signal to tritonserver", extra={"signal": signal.Signals(signum).name})
        if process.poll() is None:
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = process.wait()
    logger.info("tritonserver exited", extra={"exit_code": code})
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
