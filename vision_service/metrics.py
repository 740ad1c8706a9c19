"""The vision service's Prometheus metrics: gRPC server counters and latencies (mediabot.grpc_metrics).

Served on VISION_METRICS_PORT (0 = off). Detections are timed by grpc_server_handling_seconds
{grpc_method="DetectFaces"}; refused images show up as its grpc_code label (INVALID_ARGUMENT, ...).
Triton keeps its own metrics (inference counts, queue and compute times) on its port 8002.
"""

from __future__ import annotations

import grpc

from mediabot.grpc_metrics import ServerMetricsInterceptor, start_metrics_server

__all__ = ["interceptors", "start_metrics_server"]


def interceptors() -> list[grpc.ServerInterceptor]:
    return [ServerMetricsInterceptor()]
