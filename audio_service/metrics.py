"""The audio service's Prometheus metrics: gRPC server counters and latencies (mediabot.grpc_metrics).

Served on AUDIO_METRICS_PORT (0 = off). Conversions are timed by grpc_server_handling_seconds
{grpc_method="ConvertToWav"}, and refused inputs show up as its grpc_code label (INVALID_ARGUMENT, ...).
"""

from __future__ import annotations

import grpc

from mediabot.grpc_metrics import ServerMetricsInterceptor, start_metrics_server

__all__ = ["interceptors", "start_metrics_server"]


def interceptors() -> list[grpc.ServerInterceptor]:
    return [ServerMetricsInterceptor()]
