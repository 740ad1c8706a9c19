"""The JetStream worker's wiring: the loop (gateway.intake.jetstream_worker) on the process's Services.

Kept apart from gateway.intake.worker's ``main`` so the spool path there stays as it was; ``main`` calls
``run_jetstream_worker`` when INTAKE=jetstream.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from gateway.config import Settings
from gateway.intake.housekeeping import worker_privacy_sweep
from gateway.intake.jetstream_intake import JetStreamIntake
from gateway.intake.jetstream_worker import JetStreamWorker
from gateway.intake.spool import Backoff
from gateway.intake.worker_http import Heartbeat, serve_worker_http, stale_after_s

logger = logging.getLogger("gateway.intake.worker")


def run_jetstream_worker(settings: Settings, services, stop: threading.Event) -> int:  # noqa: ANN001 (Services)
    """Run the loop until ``stop``; exit status (2: the Services were built for another intake)."""
    intake = services.intake
    if not isinstance(intake, JetStreamIntake):
        logger.error("INTAKE=jetstream but the intake built is not JetStream", extra={"intake": type(intake).__name__})
        return 2
    heartbeat = Heartbeat(stale_after_s(settings.spool_poll_s, settings.spool_attempt_budget_s))
    worker = JetStreamWorker(
        intake.queue, services.processor,
        backoff=Backoff(settings.spool_retry_base_s, settings.spool_retry_max_s),
        attempt_budget_s=settings.spool_attempt_budget_s,
        tell=services.deferred.tell,
        heartbeat=heartbeat.beat,
        # Every delivery of a message that arrived before the erase must still see the marker.
        housekeeping=worker_privacy_sweep(
            services, erasure_memory=timedelta(seconds=settings.nats_ack_wait_s * settings.intake_max_attempts
                                               + settings.spool_retry_max_s * settings.intake_max_attempts)
            + timedelta(hours=1)),
    )
    http = serve_worker_http(settings.worker_metrics_port, heartbeat, intake) if settings.worker_metrics_port else None
    if http is not None:
        logger.info("worker /healthz and /metrics served", extra={"port": http.port})
    try:
        worker.run(stop, concurrency=settings.worker_concurrency)
    finally:
        if http is not None:
            http.close()
    return 0
