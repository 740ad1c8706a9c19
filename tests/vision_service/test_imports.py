"""The vision service must stay small: no torch (nor OpenCV) in its process, whatever the venv contains."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_service_imports_neither_torch_nor_cv2() -> None:
    code = (
        "import sys, vision_service.__main__, vision_service.server;"
        "print(sorted(m for m in ('torch', 'cv2', 'torchvision') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
