"""The privacy housekeeping a worker does now and then, whichever intake it works for.

Every ``sweep_every_s``: expire old media where the store does not expire it by itself (RETENTION_DAYS on the
filesystem, or an S3 server without a lifecycle rule), and forget erasure markers no longer needed. Both
workers run it between their messages (the spool worker after each pass, the JetStream one between deliveries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from gateway.privacy import Privacy

if TYPE_CHECKING:
    from gateway.services import Services

logger = logging.getLogger(__name__)


class PrivacySweep:
    def __init__(self, privacy: Privacy, *, expire_media: bool | Callable[[], bool], erasure_memory: timedelta,
                 sweep_every_s: float) -> None:
        self._privacy = privacy
        # RETENTION_DAYS where the store does not expire media by itself. A callable is asked at each sweep:
        # an S3 store knows whether its lifecycle rule took only once it has reached the server
        # (gateway.storage.s3 checks on first use).
        self._expire_media = expire_media if callable(expire_media) else (lambda: expire_media)
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
            self._privacy.forget_old_markers(self._erasure_memory)
            # Asked after the store was used: an S3 store has then tried its lifecycle rule.
            expired = self._privacy.expire() if self._expire_media() else 0
        except OSError as error:  # storage down: the next sweep tries again
            logger.warning("privacy housekeeping failed; will try again", extra={"error": str(error)})
            return 0
        return expired


def worker_privacy_sweep(services: Services, *, erasure_memory: timedelta) -> PrivacySweep:
    """The sweep both workers run on their Services: media expires with RETENTION_DAYS where the store does not
    expire it by itself, asked at each sweep (an S3 store down when the worker started learns it later)."""
    settings = services.settings
    return PrivacySweep(
        services.privacy,
        expire_media=lambda: settings.retention_days is not None and not services.store.expires_by_itself,
        erasure_memory=erasure_memory,
        sweep_every_s=settings.privacy_sweep_s,
    )
