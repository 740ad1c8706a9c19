"""How much media one gateway process holds at once, shared by all its threads (MEDIA_MEMORY_MB).

gunicorn runs each worker with several threads, and every thread working on a media item holds the
download, the gRPC request built from it and, for a voice note, the WAV that comes back (up to 29 MB for
15 minutes). Without a bound, a handful of long voice notes arriving together is enough to pass the
container's memory limit. So each item claims what it will hold from one allowance per process:
- a download claims its declared Content-Length (or MAX_MEDIA_BYTES when the host declares none) before
  reading the body;
- a voice note also claims the largest WAV the audio service can return before calling it.
An item that finds the allowance full waits, at most MEDIA_MEMORY_WAIT_S and never past its webhook's
budget; then it gives up the attempt as retryable, so the spool (gateway.intake.spool) keeps it and the worker
tries it again later. Nothing is dropped. One item alone always fits: a claim larger than the whole
allowance is cut to it, so a small setting slows the bot down instead of refusing large media.

Claimed bytes are payload bytes; the process holds about three times that at its peak (the download, the
protobuf message and gRPC's serialized copy of it), so 96 MiB keeps a worker's RSS near 400 MB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.budget import Budget

MIB = 1024 * 1024
# Left of the webhook budget after waiting for memory, for the work itself and the reply.
_WORK_MARGIN_S = 1.0


class MemoryBusy(Exception):
    """The allowance stayed full for as long as this item could wait (retry it later)."""


class Claim:
    """What one media item holds of the allowance; grows as the item learns what it needs."""

    def __init__(self, memory: MediaMemory, budget: Budget) -> None:
        self._memory = memory
        self._budget = budget
        self.held = 0

    def take(self, nbytes: int) -> None:
        """Hold ``nbytes`` more, waiting for room; MemoryBusy if there is none in time."""
        wait_s = max(0.0, min(self._memory.max_wait_s, self._budget.remaining() - _WORK_MARGIN_S))
        self.held += self._memory._take(nbytes, self.held, time.monotonic() + wait_s)


class MediaMemory:
    """A counting semaphore over bytes (threading.Semaphore counts units one at a time)."""

    def __init__(self, capacity_bytes: int, max_wait_s: float) -> None:
        if capacity_bytes <= 0:
            raise ValueError("the media memory allowance must be positive")
        self.capacity = capacity_bytes
        self.max_wait_s = max_wait_s
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        with self._changed:
            return self._used

    @contextmanager
    def claim(self, budget: Budget) -> Iterator[Claim]:
        """A claim for one item, given back whatever happens to the item."""
        claim = Claim(self, budget)
        try:
            yield claim
        finally:
            if claim.held:
                with self._changed:
                    self._used -= claim.held
                    self._changed.notify_all()

    def _take(self, nbytes: int, already_held: int, deadline: float) -> int:
        # A lone item must always be able to proceed: never ask for more than the allowance leaves it.
        nbytes = max(0, min(nbytes, self.capacity - already_held))
        with self._changed:
            while self._used + nbytes > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MemoryBusy(
                        f"{self._used // MIB} of {self.capacity // MIB} MiB of media in flight in this process; "
                        f"{-(-nbytes // MIB)} MiB more did not fit in time"
                    )
                self._changed.wait(left)
            self._used += nbytes
        return nbytes
