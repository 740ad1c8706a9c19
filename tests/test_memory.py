"""mediabot.memory: with the mmap threshold fixed, a freed media-sized buffer leaves the process at once.

Each case runs in a fresh interpreter, as a service starts: a 30 MB buffer is allocated and freed (glibc
raises its dynamic threshold to 30 MB), then a second one; what stays resident after the second is freed
is the difference.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import sys
from mediabot.memory import return_large_buffers_to_the_os

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

if sys.argv[1] == "fixed":
    assert return_large_buffers_to_the_os()
for _ in range(2):
    before = rss_kb()
    buffer = bytearray(30 * 1024 * 1024)
    buffer[::4096] = b"x" * len(buffer[::4096])
    del buffer
print(rss_kb() - before)
"""


@pytest.mark.parametrize(("mode", "kept_mb"), [("fixed", (0, 5)), ("glibc-default", (25, 40))])
def test_a_freed_large_buffer_is_given_back(mode: str, kept_mb: tuple[int, int]) -> None:
    run = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    kept = int(run.stdout) / 1024
    assert kept_mb[0] <= kept <= kept_mb[1], run.stdout
