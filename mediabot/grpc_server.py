"""The gRPC server skeleton both services share: build, run until a signal, drain; only the servicer differs.

``build_server`` makes a bound, not yet started server with everything a mediabot service has: a bounded
thread pool and queue (calls beyond it are refused with RESOURCE_EXHAUSTED by gRPC itself), message size
limits (mediabot.limits), a maximum connection age, the health service (NOT_SERVING until the service says
otherwise), reflection, TLS/mTLS (mediabot.grpc_tls), the metrics interceptor (mediabot.grpc_metrics) and a
catch-all that turns an unexpected exception into INTERNAL. ``serve`` is a service's ``main``: settings, then
the server, then SIGTERM/SIGINT → health NOT_SERVING → ``stop(grace)``; a bad setting is one log line and exit
status 2, never a traceback.

Why a maximum connection age: the gateway keeps one HTTP/2 connection per service address for its whole
life, so replicas added by an autoscaler would never see a call. Closing connections after a few minutes
(gracefully: GOAWAY, calls in flight finish) makes the client resolve the name again and, with its
round_robin policy, spread calls over every address it finds.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mediabot.grpc_metrics import ServerMetricsInterceptor, start_metrics_server
from mediabot.config import ConfigError, ServerSettings
from mediabot.grpc_tls import add_port, server_credentials
from mediabot.logs import configure_logging
from mediabot.memory import return_large_buffers_to_the_os

logger = logging.getLogger(__name__)

S = TypeVar("S")

# Exit status for a configuration the process cannot start with (as sysexits' EX_USAGE-style "fix the input").
EXIT_BAD_CONFIGURATION = 2
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class BindError(OSError):
    """The listen address cannot be bound (in use, not an address of this host)."""


@dataclass(frozen=True)
class ServerConfig:
    """What the skeleton needs from a service's settings; each service's server.py fills it in."""

    # Short name ("audio"): log lines, thread names.
    name: str
    # Full name of the gRPC service ("mediabot.v1.AudioService"): health and reflection list it.
    service_name: str
    # The settings every service has (mediabot.config.ServerSettings: listen address, threads and queue,
    # drain time, connection age, metrics port, TLS), read under the service's prefix.
    settings: ServerSettings
    max_receive_bytes: int
    max_send_bytes: int
    # Added to the "listening" log line (the service's own limits).
    log_fields: Mapping[str, object] = field(default_factory=dict)

    def grpc_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_send_message_length", self.max_send_bytes),
        ]
        if self.settings.max_connection_age_s > 0:
            # gRPC adds ±10% jitter to the age, so the connections of many clients do not all close at once.
            options += [
                ("grpc.max_connection_age_ms", round(self.settings.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", round(self.settings.grace_s * 1000)),
            ]
        return options


class GrpcServer:
    """A bound, not yet started server, its port, its health, and what the service runs beside it.

    Not a grpc.Server subclass: the service asks for what it needs (``set_serving``, hooks) instead of
    overriding the server's methods, and ``stop`` always does the drain in the right order.
    """

    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer,
                 config: ServerConfig) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.config = config
        self._on_start: list[Callable[[], None]] = []
        self._after_stop: list[Callable[[], None]] = []

    def on_start(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` right after the server starts (a health watcher thread, say)."""
        self._on_start.append(hook)

    def after_stop(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the calls in flight are done (close a client they were using)."""
        self._after_stop.append(hook)

    def set_serving(self, serving: bool) -> None:
        """Health for the server as a whole ("") and for the service; ignored once stopping."""
        for name in ("", self.config.service_name):
            self.health.set(name, SERVING if serving else NOT_SERVING)

    def start(self) -> None:
        self.server.start()
        for hook in self._on_start:
            hook()

    def stop(self, grace: float | None) -> threading.Event:
        """Health NOT_SERVING first (for load balancers and probes, and it stays so), then stop taking calls;
        those in flight get ``grace`` seconds. The event is set when they are done and the hooks have run."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        done = threading.Event()

        def finish() -> None:
            stopped.wait()
            for hook in self._after_stop:
                try:
                    hook()
                except Exception:
                    logger.exception("stop hook failed", extra={"service": self.config.name})
            done.set()

        threading.Thread(target=finish, name=f"{self.config.name}-stop", daemon=True).start()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


class CatchAllInterceptor(grpc.ServerInterceptor):
    """An exception a servicer did not expect is logged with its traceback and answered INTERNAL.

    Without it gRPC answers UNKNOWN with "Exception calling application", and logs through its own logger
    without the request id. A call the servicer ended itself (``context.abort``) passes through untouched.
    """

    def __init__(self, service: str) -> None:
        self._service = service

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        method = handler_call_details.method
        service = self._service

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception:
                if context.code() not in (None, grpc.StatusCode.OK):
                    raise  # context.abort(): the servicer chose the status
                logger.exception("unexpected error in a call", extra={
                    "service": service, "method": method, "request_id": getattr(request, "request_id", None),
                })
                context.abort(grpc.StatusCode.INTERNAL, f"The {service} service failed unexpectedly.")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def build_server(config: ServerConfig) -> GrpcServer:
    """A fully configured server bound to ``config.settings.listen``; the service adds its servicer to ``.server``
    before ``start()``.

    Health starts NOT_SERVING for "" and the service until the service calls ``set_serving(True)``. Raises
    ConfigError for an unusable certificate setting and BindError when the address cannot be bound.
    """
    credentials = server_credentials(
        config.settings.tls_cert_file, config.settings.tls_key_file, config.settings.tls_client_ca_file, prefix=config.settings.ENV_PREFIX
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.settings.workers, thread_name_prefix=f"{config.name}-rpc"),
        maximum_concurrent_rpcs=config.settings.max_concurrent_rpcs,
        options=config.grpc_options(),
        # Metrics outermost, so it counts the INTERNAL the catch-all answers.
        interceptors=[ServerMetricsInterceptor(), CatchAllInterceptor(config.name)],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((config.service_name, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    try:
        port = add_port(server, config.settings.listen, credentials)
    except RuntimeError as error:  # grpc raises RuntimeError where older versions returned 0
        raise BindError(f"cannot listen on {config.settings.listen} ({error})") from None
    if port == 0:
        raise BindError(f"cannot listen on {config.settings.listen}")
    built = GrpcServer(server, port, health_servicer, config)
    built.set_serving(False)
    return built


def serve(
    name: str,
    load_settings: Callable[[], S],
    create: Callable[[S], GrpcServer],
    *,
    log_level: Callable[[S], str] = lambda settings: getattr(settings, "log_level", "INFO"),
) -> int:
    """A service's ``main``: returns the exit status (0 after a clean stop, 2 for a bad configuration).

    Settings, then the server; either failing with a configuration error (a bad setting, an unusable TLS file,
    an address that cannot be bound) is one "bad configuration" log line naming the problem, and status 2.
    """
    configure_logging(name)  # before the settings, so even their error is a JSON line
    try:
        settings = load_settings()
        configure_logging(name, log_level(settings))
        return_large_buffers_to_the_os()
        server = create(settings)
    except (ConfigError, BindError) as error:
        logger.error("bad configuration", extra={"service": name, "error": str(error)})
        return EXIT_BAD_CONFIGURATION
    run_until_signalled(server)
    return 0


def run_until_signalled(server: GrpcServer) -> None:
    """Start ``server`` (and its metrics port), then block until SIGTERM/SIGINT and the drain are over."""
    config = server.config
    server.start()
    if config.settings.metrics_port:
        metrics_server = start_metrics_server(config.settings.listen, config.settings.metrics_port)
        logger.info(f"{config.name} metrics listening", extra={"metrics_port": metrics_server.server_port})
    logger.info(
        f"{config.name} service listening",
        extra={"listen": config.settings.listen, "port": server.port, "tls": bool(config.settings.tls_cert_file),
               "mtls": bool(config.settings.tls_client_ca_file), "workers": config.settings.workers,
               "max_concurrent_rpcs": config.settings.max_concurrent_rpcs,
               "max_connection_age_s": config.settings.max_connection_age_s, **config.log_fields},
    )
    stopped: list[threading.Event] = []

    def shut_down(signum: int, _frame: FrameType | None) -> None:
        if stopped:
            return  # a second signal: the drain is already under way
        logger.info(f"{config.name} service stopping",
                    extra={"signal": signal.Signals(signum).name, "grace_s": config.settings.grace_s})
        stopped.append(server.stop(config.settings.grace_s))

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    server.wait_for_termination()
    if stopped:
        stopped[0].wait(timeout=config.settings.grace_s + 5)
    logger.info(f"{config.name} service stopped")
