"""The model sees a fixed square canvas; these two pure functions move a photo onto it and boxes back off it.

Letterboxing (scale to fit, keep the aspect ratio, top-left, black elsewhere) rather than squashing keeps
faces their real shape, and putting the photo at the top-left makes the way back a single division.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


# float32 coordinates are off by ~1e-7 relative (0.2f * 1200 = 240.0000036); without this slack, floor/ceil
# would widen an exact box by a pixel.
_FLOAT32_SLACK = 1e-3


@dataclass(frozen=True)
class Face:
    """A box in pixels of the upright photo, right/bottom exclusive, as in the BoundingBox message."""

    left: int
    top: int
    right: int
    bottom: int
    confidence: float
    # The view that found it (vision_service/views.py: "whole", "tile 900 r1c2", "sideways 90").
    view: str = "whole"


def letterbox(image: Image.Image, canvas: int) -> tuple[np.ndarray, float]:
    """Return the uint8 [canvas, canvas, 3] RGB tensor and the scale (canvas pixels per pixel of ``image``)."""
    if image.mode != "RGB":
        raise ValueError(f"letterbox expects an RGB image, got {image.mode}")
    width, height = image.size
    scale = canvas / max(width, height)
    size = (min(canvas, max(1, round(width * scale))), min(canvas, max(1, round(height * scale))))
    if size != image.size:
        # reducing_gap lets Pillow shrink by an integer factor first (box filter), then finish with an
        # antialiased bilinear pass: same result within a grey level, several times faster on big photos.
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    tensor = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    tensor[: size[1], : size[0]] = np.asarray(image)
    return tensor, scale


def postprocess(
    detections: np.ndarray,
    num_detections: int,
    *,
    canvas: int,
    scale: float,
    width: int,
    height: int,
    min_confidence: float,
) -> list[Face]:
    """Turn the model's rows ([confidence, x_min, y_min, x_max, y_max], normalized to the canvas) into Faces.

    ``scale`` is canvas pixels per pixel of the upright photo of size ``width`` x ``height``; boxes are
    clipped to the photo (a detection can reach into the black padding) and empty ones are dropped.
    """
    rows = np.asarray(detections, dtype=np.float32).reshape(-1, 5)[: max(0, int(num_detections))]
    faces: list[Face] = []
    to_pixels = canvas / scale
    for confidence, x_min, y_min, x_max, y_max in rows.tolist():
        if not confidence >= min_confidence:  # also drops NaN
            continue
        left = min(max(math.floor(x_min * to_pixels + _FLOAT32_SLACK), 0), width)
        top = min(max(math.floor(y_min * to_pixels + _FLOAT32_SLACK), 0), height)
        right = min(max(math.ceil(x_max * to_pixels - _FLOAT32_SLACK), 0), width)
        bottom = min(max(math.ceil(y_max * to_pixels - _FLOAT32_SLACK), 0), height)
        if right <= left or bottom <= top:
            continue
        faces.append(Face(left, top, right, bottom, float(confidence)))
    faces.sort(key=lambda face: face.confidence, reverse=True)
    return faces
