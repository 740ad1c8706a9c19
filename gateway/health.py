"""GET /healthz (the process answers) and GET /readyz (it can accept a message and keep it).

Readiness is one question: would a webhook accepted now be kept until it is done? That is the intake's
answer alone (``services.intake.ready()``: the spool's directory writable; JetStream: the stream answers).
Audio, vision and storage being down is not a reason to stop sending webhooks here: the message is kept and
finished when they are back ("I'll save it shortly"), whereas a gateway out of the Service loses Twilio's
webhooks outright (Twilio does not queue them). So a Triton rollout or a MinIO restart no longer takes
every gateway out of rotation at once.

The body still reports every backend for people (each gRPC service's standard health service about its
own service name with a short deadline, the store whether it can take writes, the intake), and
``"decided_by": "intake"`` says which one the status code follows.
"""

from __future__ import annotations

import grpc
from flask import Blueprint, Response, current_app, jsonify
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.services import Services
from mediabot.v1 import audio_pb2, vision_pb2

bp = Blueprint("health", __name__)

AUDIO_SERVICE = audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name
VISION_SERVICE = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="alive")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    services: Services = current_app.extensions["mediabot"]
    timeout = services.settings.health_check_timeout_s
    dependencies = {
        "audio": _check(services.audio_channel, AUDIO_SERVICE, timeout),
        "vision": _check(services.vision_channel, VISION_SERVICE, timeout),
        # Whichever store is configured: SERVING when it can take writes now (MinIO: the bucket answers).
        "storage": services.store.check(),
        # Whether a message accepted now would be kept until it is done (gateway.intake).
        "intake": "SERVING" if services.intake.ready() else "NOT_SERVING",
    }
    ready = dependencies["intake"] == "SERVING"  # the others are reported, not decisive (module docstring)
    body = {"status": "ready" if ready else "not ready", "dependencies": dependencies, "decided_by": "intake"}
    return jsonify(body), 200 if ready else 503


def _check(channel: grpc.Channel, service: str, timeout: float) -> str:
    """"SERVING", another health status name, or the gRPC error code that stopped the check."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        return code.name if code is not None else "ERROR"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
