"""gRPC server metrics for the audio and vision services, and the HTTP port Prometheus scrapes them on.

A server interceptor rather than code in each servicer: every method, health checks included, is
counted the same way, with the status code the client actually received. The names follow the
go-grpc-prometheus conventions (grpc_server_handled_total, grpc_server_handling_seconds) that ready-made
Grafana dashboards expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Histogram, start_http_server

HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's arrival to its answer, by service and method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


class ServerMetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times unary-unary RPCs (the only kind the mediabot contract has)."""

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        behavior = handler.unary_unary

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = behavior(request, context)
                code = context.code() or grpc.StatusCode.OK  # set_code() without raising counts too
                return response
            except Exception:
                # context.abort() sets the code, then raises; anything else becomes UNKNOWN on the wire.
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                HANDLED.labels(service, method, code.name).inc()
                HANDLING_SECONDS.labels(service, method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def start_metrics_server(listen: str, port: int) -> WSGIServer:
    """Serve /metrics on the gRPC listen address's host and ``port`` in a daemon thread.

    Same host as the gRPC port on purpose: loopback in development, all interfaces in a container.
    ``.server_port`` is the bound port; ``.shutdown()`` stops it.
    """
    host = listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
    server, _thread = start_http_server(port, addr=host)
    return server
