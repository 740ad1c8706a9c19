"""The intake worker's own small HTTP server, on WORKER_METRICS_PORT: ``GET /healthz`` and ``GET /metrics``.

A worker has no webhook to answer, so without this nothing outside could tell a worker whose loop is stuck
(a hung call, a deadlock) from a working one, and Prometheus could not see what it does. Both intakes'
workers use it (the spool worker, gateway.intake.worker, and the JetStream one): each loop calls
``heartbeat.beat()`` on every pass and after every message it works on, and

    server = serve_worker_http(port, heartbeat, intake)   # a daemon thread; port 0 = a free one
    ...
    server.close()

- ``/healthz``: 200 while every loop has beaten within ``heartbeat.stale_after_s``, else 503. It asks nothing
  else, never audio, vision or storage: a worker waiting for a restarting dependency is alive and must not
  be restarted for it (that is what the intake's retries are for); a worker whose loop stopped must be.
- ``/metrics``: the worker process's metrics in Prometheus' text format, from gateway.metrics's own
  definitions (gateway.metrics.registry: media outcomes per attempt, stage latencies, the intake's depth
  and oldest age, read at scrape time), plus how long ago the loop last beat.

Served by prometheus-client's WSGI app (content negotiation, gzip, OpenMetrics) on the standard library's
wsgiref server, one thread per request, every interface (the kubelet and Prometheus come from outside the pod).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import metrics

__all__ = ["Heartbeat", "WorkerHttpServer", "serve_worker_http"]


class Heartbeat:
    """When the worker's loops last made progress (monotonic clock). Each loop (thread) beats for itself and
    the age is the oldest loop's: one stuck loop of several is a stuck worker, since the messages it holds
    wait with it."""

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._last: dict[int, float] = {}  # thread ident -> its last beat

    def beat(self) -> None:
        now = self._clock()
        with self._lock:
            self._last[threading.get_ident()] = now

    def age_s(self) -> float:
        with self._lock:
            oldest = min(self._last.values(), default=self._started)
        return max(0.0, self._clock() - oldest)

    def alive(self) -> bool:
        return self.age_s() <= self.stale_after_s


def stale_after_s(poll_s: float, attempt_budget_s: float) -> float:
    """How long a loop may go without a beat before it counts as stuck: a few poll intervals plus two
    attempts' budgets (it beats after each message, and one attempt may take its whole budget)."""
    return 3 * poll_s + 2 * attempt_budget_s


class _HeartbeatCollector(Collector):
    def __init__(self, heartbeat: Heartbeat) -> None:
        self._heartbeat = heartbeat

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("mediabot_worker_last_pass_age_seconds",
                                "Seconds since the intake worker's loop last made progress (/healthz: 503 past "
                                "its limit).", value=self._heartbeat.age_s())


def worker_app(heartbeat: Heartbeat, intake: metrics.Queue) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: /healthz from the heartbeat, /metrics from gateway.metrics's registry, 404 otherwise."""
    registry = metrics.registry(intake)
    registry.register(_HeartbeatCollector(heartbeat))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            alive, age_s = heartbeat.alive(), round(heartbeat.age_s(), 3)
            body = json.dumps({"status": "alive" if alive else "stalled", "last_pass_s_ago": age_s,
                               "stale_after_s": heartbeat.stale_after_s}).encode()
            start_response("200 OK" if alive else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]

    return app


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - probes every few seconds: no log line
        pass


class WorkerHttpServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_worker_http(port: int, heartbeat: Heartbeat, intake: metrics.Queue, host: str = "0.0.0.0") -> WorkerHttpServer:  # noqa: S104 - probes and scrapes come from outside the pod
    """Start serving /healthz and /metrics on ``host:port`` (0: a free port, see ``.port``) in a daemon thread."""
    server = make_server(host, port, worker_app(heartbeat, intake),
                         server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="worker-http", daemon=True)
    thread.start()
    return WorkerHttpServer(server, thread)
