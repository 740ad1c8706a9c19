"""One clock for one webhook, so the sum of every wait stays inside Twilio's 15 s timeout.

Per-call timeouts alone don't add up safely: a message with several media items, each allowed its own
download and RPC timeout plus 404 retry pauses, could run far past the point where Twilio gives up.
Every step instead asks the budget how much is left and uses the smaller of that and its own timeout.
"""

from __future__ import annotations

import time


class Budget:
    def __init__(self, seconds: float) -> None:
        self._ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._ends_at - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def cap(self, timeout: float) -> float:
        """``timeout`` cut to what is left of the budget."""
        return min(timeout, self.remaining())
