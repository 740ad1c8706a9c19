"""`python -m gateway.intake.worker`: finishes what the webhooks spooled but could not complete in time.

With INTAKE=jetstream the same command runs the JetStream worker instead (gateway.intake.jetstream_worker:
the stream's consumer, not a spool directory); everything below about the process holds for both.

A process of its own (a Procfile line, a second container beside the gateway sharing SPOOL_DIR) rather
than a thread inside each gunicorn worker, because:
- gunicorn owns its workers' signals, timeouts and restarts: a retry loop inside them would be killed by
  the worker timeout, multiplied by --workers, and stopped only as a side effect of request handling;
- here SIGTERM has one clear meaning (finish the attempt in hand, take nothing new, exit) and start-up
  has one clear job (resume the spool); storage, audio or vision being down at boot changes nothing (the
  store checks its bucket on first use, gateway.storage.s3), the entries simply wait for their next try;
- any number of them (and the gateway's own webhook attempts) can share one spool: every attempt holds
  the entry's flock lease, so none runs twice at the same time, and a dead holder's lease dies with it.

When an attempt finishes an entry the webhook could not, the user is told how it ended (``services.deferred``,
gateway.deferred). With WORKER_METRICS_PORT set, /healthz and /metrics are served (gateway.intake.worker_http)
from the loop's heartbeat.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from gateway.budget import Budget
from gateway.config import Settings
from gateway.intake.attempt import Attempts
from gateway.intake.spool import Spool
from gateway.intake.spooled import SpoolIntake
from gateway.intake.worker_http import Heartbeat, serve_worker_http, stale_after_s
from gateway.intake.housekeeping import PrivacySweep, worker_privacy_sweep
from mediabot.config import ConfigError
from mediabot.logs import configure_logging
from mediabot.memory import return_large_buffers_to_the_os

if TYPE_CHECKING:
    from gateway.deferred import DeferredReplies

logger = logging.getLogger("gateway.intake.worker")


class SpoolWorker:
    def __init__(
        self,
        spool: Spool,
        attempts: Attempts,
        *,
        poll_s: float,
        attempt_budget_s: float,
        housekeeping: PrivacySweep | None = None,
        deferred: DeferredReplies | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._spool = spool
        self._attempts = attempts
        self._poll_s = poll_s
        self._attempt_budget_s = attempt_budget_s
        # The privacy sweep (expiry, old markers), at its own pace.
        self._housekeeping = housekeeping
        # Tells the user how a deferred item ended (gateway.deferred: Twilio's REST API, Telegram's sendMessage).
        self._deferred = deferred
        # Beaten on every pass and after every entry: /healthz on WORKER_METRICS_PORT (gateway.intake.worker_http).
        self.heartbeat = heartbeat or Heartbeat(stale_after_s(poll_s, attempt_budget_s))

    def run(self, stop: threading.Event) -> None:
        """Attempt every due entry, then sleep a poll interval; until ``stop`` is set (checked between
        entries, so an attempt in hand is finished and everything else stays spooled). Every
        ``sweep_every_s``: expire old media when retention is the worker's job, and forget old privacy markers."""
        logger.info("spool worker started", extra={"spool_dir": str(self._spool.directory),
                                                  "spooled": self._spool.depth()})
        while not stop.is_set():
            self.heartbeat.beat()
            self.run_once(stop)
            self.sweep_if_due()
            self.heartbeat.beat()
            stop.wait(self._poll_s)
        logger.info("spool worker stopped", extra={"spooled": self._spool.depth()})

    def sweep_if_due(self, now: float | None = None) -> int:
        """The privacy housekeeping when it is due; how many media objects expired."""
        return self._housekeeping(now) if self._housekeeping is not None else 0

    def run_once(self, stop: threading.Event | None = None) -> int:
        """One pass over the due entries; returns how many were attempted."""
        attempted = 0
        for message_sid in self._spool.due():
            if stop is not None and stop.is_set():
                break
            lease = self._spool.lease(message_sid)
            if lease is None:  # held by a webhook or another worker, or finished meanwhile
                continue
            if lease.entry.due_at > time.time():  # someone attempted it between our listing and our lease
                lease.release()
                continue
            self._attempts.attempt(lease, Budget(self._attempt_budget_s), skip_finals=True, deferred=self._deferred)
            self.heartbeat.beat()
            attempted += 1
        return attempted


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        configure_logging("gateway-worker")
        logger.error("bad configuration", extra={"error": str(error)})
        return 2
    configure_logging("gateway-worker", settings.log_level)
    return_large_buffers_to_the_os()

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Nothing here waits for storage, audio or vision: only a bad setting (or an unusable MEDIA_ROOT or
    # SPOOL_DIR) stops the worker; an S3 store that cannot be reached yet is checked again on first use.
    from gateway.services import Services
    from gateway.storage.base import StoreStartupError

    try:
        services = Services.from_settings(settings)
    except (StoreStartupError, ConfigError, OSError) as error:
        logger.error("cannot start", extra={"error": str(error)})
        return 2
    if settings.intake == "jetstream":
        # The same Services (processor, store, privacy, deferred answers), another loop.
        from gateway.intake.jetstream_main import run_jetstream_worker

        try:
            return run_jetstream_worker(settings, services, stop)
        finally:
            services.close()
    http = None
    try:
        # The same intake the gateway's webhooks use (built by Services): this worker finishes its spool.
        intake = services.intake
        if not isinstance(intake, SpoolIntake):
            logger.error("this worker finishes a spool; the configured intake has none",
                         extra={"intake": type(intake).__name__})
            return 2
        worker = SpoolWorker(
            intake.spool, intake.attempts, poll_s=settings.spool_poll_s,
            attempt_budget_s=settings.spool_attempt_budget_s,
            # An erase must outlive every retry of what arrived before it; then the marker (a number) goes.
            housekeeping=worker_privacy_sweep(
                services, erasure_memory=timedelta(seconds=settings.spool_give_up_after_s) + timedelta(hours=1)),
            deferred=services.deferred,
        )
        if settings.worker_metrics_port:
            http = serve_worker_http(settings.worker_metrics_port, worker.heartbeat, intake)
            logger.info("worker /healthz and /metrics served", extra={"port": http.port})
        worker.run(stop)
    finally:
        if http is not None:
            http.close()
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
