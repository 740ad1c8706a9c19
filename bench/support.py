"""What the benchmarks share with the tests, outside tests/ so that bench/ never imports a test module.

The photo set lives beside it (bench/photo_set.py); this holds the repository's paths, a free port, and
the face model artifact that Triton serves. tests/fixtures/triton.py imports these from here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
FACE_DETECTOR_WEIGHTS = MODEL_REPOSITORY / "face_detector" / "1" / "weights.pt"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_face_detector_artifact() -> Path:
    """``make model`` if the artifact is missing; in a subprocess, so the calling process needn't import torch."""
    if not FACE_DETECTOR_WEIGHTS.is_file():
        subprocess.run([sys.executable, "-m", "face_model.build"], cwd=REPO_ROOT, check=True)
    return FACE_DETECTOR_WEIGHTS
