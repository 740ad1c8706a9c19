"""One photo through decode -> views -> Triton (one batched request) -> merged boxes, timing each step.

The upright views (the whole photo and, for a large enough photo, its enlarged tiles) go to Triton as one
request; only when they find nothing are the photo's two sideways turns sent, as a second, smaller request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vision_service.canvas import Face
from vision_service.decode import decode_image
from vision_service.detector import TritonDetector
from vision_service.errors import DetectorTimeout, DetectorUnavailable
from vision_service.merge import merge
from vision_service.views import (
    SIDEWAYS,
    TILE,
    TILE_OVERLAP,
    WHOLE,
    Box,
    TileGrid,
    View,
    pixel_box,
    render,
    sideways_views,
    to_photo,
    upright_views,
)


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class ViewPolicy:
    """Which views a photo gets and the confidence each view kind needs (config.py documents the defaults)."""

    min_confidence: float = 0.9
    tile_min_confidence: float = 0.76
    sideways_min_confidence: float = 0.92
    # The long side the tiles show the photo at; 0 = no tiles.
    tile_long_side: int = 900
    sideways: bool = True

    @property
    def grid(self) -> TileGrid | None:
        return TileGrid(self.tile_long_side, TILE_OVERLAP) if self.tile_long_side else None

    @property
    def thresholds(self) -> dict[str, float]:
        return {WHOLE: self.min_confidence, TILE: self.tile_min_confidence, SIDEWAYS: self.sideways_min_confidence}

    def with_min_confidence(self, value: float) -> ViewPolicy:
        """The policy a caller's own ``min_confidence`` asks for: that threshold for every view kind."""
        return ViewPolicy(value, value, value, self.tile_long_side, self.sideways)


@dataclass(frozen=True)
class FaceReport:
    faces: list[Face]
    width: int
    height: int
    format: str
    model_version: str
    # How many canvases the detector looked at (upright views, plus the sideways ones if they ran).
    views: int = 0
    # Milliseconds per step: decode, preprocess, triton, total.
    timings_ms: dict[str, float] = field(default_factory=dict)


def find_faces(
    data: bytes,
    *,
    detector: TritonDetector,
    limits: Limits,
    policy: ViewPolicy,
    deadline: float | None = None,
    request_id: str = "",
) -> FaceReport:
    """Raises the domain errors of errors.py; never returns a result the detector did not produce.

    ``deadline`` is a ``time.monotonic()`` instant; Triton gets whatever is left of it after decoding.
    """
    info = detector.info
    if info is None:
        raise DetectorUnavailable("the face detector is not ready yet")
    canvas = info.canvas
    start = time.perf_counter()
    decoded = decode_image(
        data,
        max_bytes=limits.max_bytes,
        max_pixels=limits.max_pixels,
        # decode.py learns the photo's size only while decoding, so ask for the most any view may need:
        # libjpeg's draft still picks the smallest 1/2..1/8 scale that covers it.
        fit=policy.tile_long_side or canvas,
        # Waiting for decode memory other photos hold counts against the caller's deadline too.
        deadline=deadline,
    )
    width, height = decoded.width, decoded.height
    decoded_at = time.perf_counter()
    timings = {"decode": (decoded_at - start) * 1000, "preprocess": 0.0, "triton": 0.0}

    def detect(views: list[View]) -> tuple[list[Box], str]:
        prepared = time.perf_counter()
        batch = render(decoded.pixels, width, height, views, canvas)
        sent = time.perf_counter()
        timings["preprocess"] += (sent - prepared) * 1000
        timeout_s = None if deadline is None else deadline - time.monotonic()
        if timeout_s is not None and timeout_s <= 0:
            raise DetectorTimeout("no time was left for the face detector")
        results = detector.detect_batch(batch, timeout_s=timeout_s, request_id=request_id)
        timings["triton"] += (time.perf_counter() - sent) * 1000
        floor = min(policy.thresholds.values())
        boxes = [
            box
            for view, result in zip(views, results)
            for box in to_photo(view, result.rows, result.count, width, height, floor)
        ]
        return boxes, results[0].model_version

    views = upright_views(width, height, canvas, policy.grid)
    boxes, model_version = detect(views)
    kept = merge(boxes, policy.thresholds)
    looked_at = len(views)
    if not kept and policy.sideways:
        turned = sideways_views(width, height, canvas)
        boxes, model_version = detect(turned)
        kept = merge(boxes, policy.thresholds)
        looked_at += len(turned)
    faces = []
    for box in kept:
        pixels = pixel_box(box, width, height)
        if pixels is not None:
            faces.append(Face(*pixels, confidence=box.confidence, view=box.view.name))
    timings["total"] = (time.perf_counter() - start) * 1000
    return FaceReport(
        faces=faces,
        width=width,
        height=height,
        format=decoded.format,
        model_version=model_version,
        views=looked_at,
        timings_ms={step: round(ms, 2) for step, ms in timings.items()},
    )
