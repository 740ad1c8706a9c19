"""The privacy housekeeping a worker does now and then, whichever intake it works for.

Every ``sweep_every_s``: expire old media where the store does not expire it by itself (RETENTION_DAYS on the
filesystem, or an S3 server without a lifecycle rule), and forget erasure markers no longer needed. The
JetStream worker runs it between deliveries; the spool worker has the same steps in ``SpoolWorker.sweep_if_due``.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from gateway.privacy import Privacy

logger = logging.getLogger(__name__)


class PrivacySweep:
    def __init__(self, privacy: Privacy, *, expire_media: bool, erasure_memory: timedelta,
                 sweep_every_s: float) -> None:
        self._privacy = privacy
        self._expire_media = expire_media
        # An erase must outlive every retry of what arrived before it; then the marker (a number) goes.
        self._erasure_memory = erasure_memory
        self._sweep_every_s = sweep_every_s
        self._next_sweep = 0.0

    def __call__(self, now: float | None = None) -> int:
        """Sweep if due; how many media objects expired."""
        now = time.monotonic() if now is None else now
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self._sweep_every_s
        try:
            expired = self._privacy.expire() if self._expire_media else 0
            self._privacy.forget_old_markers(self._erasure_memory)
        except OSError as error:  # storage down: the next sweep tries again
            logger.warning("privacy housekeeping failed; will try again", extra={"error": str(error)})
            return 0
        return expired
