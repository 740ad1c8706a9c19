"""One photo through decode -> letterbox -> Triton -> boxes, timing each step for the logs and the benchmark."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vision_service.canvas import Face, letterbox, postprocess
from vision_service.decode import decode_image
from vision_service.detector import TritonDetector
from vision_service.errors import DetectorTimeout, DetectorUnavailable


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class FaceReport:
    faces: list[Face]
    width: int
    height: int
    format: str
    model_version: str
    # Milliseconds per step: decode, preprocess, triton, total.
    timings_ms: dict[str, float] = field(default_factory=dict)


def find_faces(
    data: bytes,
    *,
    detector: TritonDetector,
    limits: Limits,
    min_confidence: float,
    deadline: float | None = None,
    request_id: str = "",
) -> FaceReport:
    """Raises the domain errors of errors.py; never returns a result the detector did not produce.

    ``deadline`` is a ``time.monotonic()`` instant; Triton gets whatever is left of it after decoding.
    """
    info = detector.info
    if info is None:
        raise DetectorUnavailable("the face detector is not ready yet")
    start = time.perf_counter()
    decoded = decode_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, fit=info.canvas)
    decoded_at = time.perf_counter()
    tensor, _ = letterbox(decoded.pixels, info.canvas)
    prepared_at = time.perf_counter()
    timeout_s = None if deadline is None else deadline - time.monotonic()
    if timeout_s is not None and timeout_s <= 0:
        raise DetectorTimeout("no time was left for the face detector after decoding")
    detections = detector.detect(tensor, timeout_s=timeout_s, request_id=request_id)
    inferred_at = time.perf_counter()
    faces = postprocess(
        detections.rows,
        detections.count,
        canvas=info.canvas,
        # Canvas pixels per pixel of the full upright photo, whatever scale the JPEG was decoded at.
        scale=info.canvas / max(decoded.width, decoded.height),
        width=decoded.width,
        height=decoded.height,
        min_confidence=min_confidence,
    )
    done = time.perf_counter()
    return FaceReport(
        faces=faces,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        model_version=detections.model_version,
        timings_ms={
            "decode": round((decoded_at - start) * 1000, 2),
            "preprocess": round((prepared_at - decoded_at) * 1000, 2),
            "triton": round((inferred_at - prepared_at) * 1000, 2),
            "total": round((done - start) * 1000, 2),
        },
    )
