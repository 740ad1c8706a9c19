"""Give large buffers back to the operating system as soon as they are freed (glibc malloc's mmap threshold).

Every process here handles media in buffers of megabytes (a 16 MiB upload, a 29 MB WAV, a decoded photo).
glibc serves allocations above M_MMAP_THRESHOLD with their own mmap, unmapped on free; but its threshold is
dynamic: after such a buffer is freed it rises to that size (up to 32 MiB), so the next WAVs come from the
heap arenas instead, one per thread, where freed memory stays resident. Measured with `make bench-hostile`:
the audio service kept ~300 MB resident after six 14-minute voice notes, two at a time. Setting the
threshold explicitly (what MALLOC_MMAP_THRESHOLD_ does from the environment) turns the adjustment off.
Called once at start-up by each service; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameter numbers from glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
# Buffers from 1 MiB up get their own mapping: media buffers always, Python's small objects never.
MMAP_THRESHOLD_BYTES = 1024 * 1024


def return_large_buffers_to_the_os(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold_bytes``; False when this C library has no mallopt."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
