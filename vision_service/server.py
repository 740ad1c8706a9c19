"""The VisionService gRPC server: the servicer, and health that follows Triton (the rest: mediabot.grpc_server)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections.abc import Callable

import grpc
from PIL import Image

from mediabot import limits
from mediabot.grpc_server import GrpcServer, ServerConfig, build_server
from mediabot.v1 import vision_pb2, vision_pb2_grpc
from vision_service.config import Settings
from vision_service.decode import set_decode_memory
from vision_service.detector import TritonDetector
from vision_service.errors import (
    DecoderBusy,
    DetectorRejected,
    DetectorTimeout,
    DetectorUnavailable,
    ImageTooLarge,
    InvalidImage,
)
from vision_service.pipeline import Limits, ViewPolicy, find_faces

logger = logging.getLogger("vision_service")

SERVICE_NAME = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name
# How often the health watcher asks Triton while ready, and while not (faster, to come back quickly).
READY_POLL_S = 5.0
NOT_READY_POLL_S = 1.0
# Left of the caller's deadline for encoding and sending our answer after Triton's. Without a caller deadline
# the whole call (decode included) gets TRITON_TIMEOUT_S.
DEADLINE_MARGIN_S = 0.02


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, settings: Settings, detector: TritonDetector, watcher: HealthWatcher) -> None:
        self._settings = settings
        self._detector = detector
        self._watcher = watcher
        self._limits = Limits(max_bytes=settings.max_input_bytes, max_pixels=settings.max_pixels)
        self._policy = ViewPolicy(
            min_confidence=settings.face_min_confidence,
            tile_min_confidence=settings.face_tile_min_confidence,
            sideways_min_confidence=settings.face_sideways_min_confidence,
            tile_long_side=settings.face_tile_long_side,
            sideways=settings.face_sideways,
        )

    def DetectFaces(self, request: vision_pb2.DetectFacesRequest, context: grpc.ServicerContext):
        request_id = request.request_id or uuid.uuid4().hex
        fields = {"request_id": request_id, "content_type": request.content_type, "size": len(request.image)}
        policy = self._policy
        if request.HasField("min_confidence"):
            if not 0.0 <= request.min_confidence <= 1.0:  # also refuses NaN
                self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "min_confidence must be between 0 and 1", fields)
            policy = policy.with_min_confidence(request.min_confidence)
        min_confidence = policy.min_confidence
        remaining = context.time_remaining()
        budget_s = self._settings.triton_timeout_s
        caller_bound = remaining is not None and remaining - DEADLINE_MARGIN_S < budget_s
        if caller_bound:
            budget_s = remaining - DEADLINE_MARGIN_S
            if budget_s <= 0:
                self._abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started", fields)
        try:
            report = find_faces(
                request.image,
                detector=self._detector,
                limits=self._limits,
                policy=policy,
                deadline=time.monotonic() + budget_s,
                request_id=request_id,
            )
        except InvalidImage as error:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), fields)
        except ImageTooLarge as error:
            # OUT_OF_RANGE, not RESOURCE_EXHAUSTED: that one is gRPC's own "queue full, try later".
            self._abort(context, grpc.StatusCode.OUT_OF_RANGE, str(error), fields)
        except DecoderBusy as error:
            self._abort(context, grpc.StatusCode.UNAVAILABLE, str(error), fields)
        except DetectorTimeout as error:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if caller_bound else grpc.StatusCode.UNAVAILABLE
            self._abort(context, code, f"the face detector did not answer in time ({error})", fields)
        except DetectorUnavailable as error:
            self._watcher.check_now()
            self._abort(context, grpc.StatusCode.UNAVAILABLE, f"the face detector is unavailable ({error})", fields)
        except DetectorRejected as error:
            self._abort(context, grpc.StatusCode.INTERNAL, f"the face detector refused the request ({error})", fields)
        logger.info(
            "detected faces",
            extra={
                **fields,
                "format": report.format,
                "width": report.width,
                "height": report.height,
                "faces": len(report.faces),
                "views": report.views,
                "found_by": sorted({f.view for f in report.faces}),
                "min_confidence": min_confidence,
                "model_version": report.model_version,
                **{f"{step}_ms": ms for step, ms in report.timings_ms.items()},
            },
        )
        return vision_pb2.DetectFacesResponse(
            has_face=bool(report.faces),
            faces=[
                vision_pb2.Face(
                    box=vision_pb2.BoundingBox(left=f.left, top=f.top, right=f.right, bottom=f.bottom),
                    confidence=f.confidence,
                    view=f.view,
                )
                for f in report.faces
            ],
            width=report.width,
            height=report.height,
            format=report.format,
            model_name=self._settings.triton_model,
            model_version=report.model_version,
            min_confidence=min_confidence,
            views=report.views,
        )

    @staticmethod
    def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, fields: dict) -> None:
        logger.warning("refused", extra={**fields, "status": code.name, "reason": message})
        context.abort(code, message)


class HealthWatcher:
    """Keeps the health status equal to "Triton is up and the model is ready and matches", in both directions.

    A thread rather than a check per health probe: probes must answer fast and must not hammer Triton,
    and the detector also needs the canvas size re-read whenever the model comes back (it may have changed).
    """

    def __init__(self, detector: TritonDetector, *, set_serving: Callable[[bool], None]) -> None:
        self._detector = detector
        self._set_serving = set_serving
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._serving: bool | None = None
        self._thread = threading.Thread(target=self._run, name="vision-health", daemon=True)

    def start(self) -> None:
        self._set(False, "starting")
        self._thread.start()

    def check_now(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                info = self._detector.check(timeout_s=NOT_READY_POLL_S * 2)
            except (DetectorUnavailable, DetectorRejected) as error:
                self._set(False, str(error))
            except Exception as error:  # The watcher must outlive any surprise, or health would freeze.
                logger.exception("health check failed unexpectedly")
                self._set(False, repr(error))
            else:
                self._set(True, f"model {info.name} ready, canvas {info.canvas}x{info.canvas}")
            self._wake.wait(READY_POLL_S if self._serving else NOT_READY_POLL_S)
            self._wake.clear()

    def _set(self, serving: bool, reason: str) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        self._set_serving(serving)
        logger.info("health changed", extra={"serving": serving, "reason": reason})


def configure_pillow(settings: Settings) -> None:
    """Pillow's own bomb guard, process-wide, as a backstop to decode.py's header check at the same limit,
    and decode.py's process-wide decode memory (VISION_DECODE_MEMORY_MB).

    Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; as an error, decode.py refuses it cleanly.
    LOAD_TRUNCATED_IMAGES stays False so a cut-off upload is an error, not a half-grey photo.
    """
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    set_decode_memory(settings.decode_memory_bytes)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def server_config(settings: Settings) -> ServerConfig:
    """The shared skeleton's settings (mediabot.grpc_server)."""
    receive, send = limits.vision_server_message_bytes(settings.max_input_bytes)
    return ServerConfig(
        name="vision", service_name=SERVICE_NAME, settings=settings, max_receive_bytes=receive, max_send_bytes=send,
        log_fields={"triton_url": settings.triton_url, "model": settings.triton_model},
    )


def create_server(settings: Settings, detector: TritonDetector | None = None) -> GrpcServer:
    """Build (not start) the server; ``.port`` is the bound port (useful with port 0).

    The health status starts NOT_SERVING and follows Triton from the moment the server starts. A detector
    made here (none given) is closed once the server has stopped and its calls are done with it.
    """
    configure_pillow(settings)
    built = build_server(server_config(settings))
    owns_detector = detector is None
    if detector is None:
        detector = TritonDetector(
            settings.triton_url,
            settings.triton_model,
            settings.triton_model_version,
            timeout_s=settings.triton_timeout_s,
        )
    watcher = HealthWatcher(detector, set_serving=built.set_serving)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(settings, detector, watcher), built.server)
    built.on_start(watcher.start)

    def after_stop() -> None:
        watcher.stop()
        watcher.join(timeout=NOT_READY_POLL_S * 3)
        if owns_detector:
            detector.close()

    built.after_stop(after_stop)
    return built
