"""Real photos (bench/photo_set.py) turned into detector canvases, and the OpenCV DNN reference.

OpenCV is a test-only dependency here: it runs the same prototxt and caffemodel as the reference
the torch port must agree with.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from face_model.caffemodel import ReferenceFiles
from bench.photo_set import photo

# Photos with faces (one, two, a group, tiny, composited small) and hard negatives.
PARITY_PHOTOS = (
    "astronaut",
    "cameraman",
    "grace_hopper",
    "luispedro",
    "tom_hanks_112px",
    "zidane",
    "bus",
    "friends",
    "small_grace_hopper_on_rocket_4",
    "small_astronaut_on_coffee_8",
    "chelsea_cat",
    "coins",
    "mask_white",
)


def rgb(name: str) -> np.ndarray:
    """The photo as an RGB uint8 array (H, W, 3)."""
    with Image.open(io.BytesIO(photo(name).data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def squash(image: np.ndarray, size: int) -> np.ndarray:
    """The classic recipe: resize to size x size, ignoring the aspect ratio."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """The Triton contract: scaled to fit, at the top-left of a black size x size canvas."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return canvas


def opencv_blob(canvas_rgb: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """What OpenCV's face detector sample feeds the net: BGR, mean subtracted, NCHW float32."""
    height, width = canvas_rgb.shape[:2]
    bgr = np.ascontiguousarray(canvas_rgb[..., ::-1])
    return cv2.dnn.blobFromImage(bgr, 1.0, (width, height), tuple(float(v) for v in mean_bgr), swapRB=False, crop=False)


def opencv_net(files: ReferenceFiles, prototxt: Path | None = None) -> cv2.dnn.Net:
    net = cv2.dnn.readNetFromCaffe(str(prototxt or files.prototxt), str(files.caffemodel))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def opencv_detections(net: cv2.dnn.Net, blob: np.ndarray) -> np.ndarray:
    """OpenCV's DetectionOutput as rows [confidence, xmin, ymin, xmax, ymax] (its label is always 1)."""
    net.setInput(blob)
    out = net.forward()  # (1, 1, K, 7): image id, label, confidence, box
    rows = out[0, 0]
    rows = rows[rows[:, 2] > 0]
    return np.ascontiguousarray(rows[:, 2:7], dtype=np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [xmin, ymin, xmax, ymax] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def unmatched(
    reference: np.ndarray, candidates: np.ndarray, *, min_confidence: float, max_delta: float, min_iou: float
) -> list[str]:
    """Reference detections at >= min_confidence with no candidate within max_delta confidence and min_iou IoU."""
    problems = []
    for row in reference[reference[:, 0] >= min_confidence]:
        close = [
            (abs(float(c[0] - row[0])), iou(row[1:], c[1:]))
            for c in candidates
            if abs(float(c[0] - row[0])) <= max_delta and iou(row[1:], c[1:]) >= min_iou
        ]
        if not close:
            best = max(((iou(row[1:], c[1:]), float(c[0])) for c in candidates), default=(0.0, 0.0))
            problems.append(f"conf {row[0]:.4f} box {np.round(row[1:], 4).tolist()}: best IoU {best[0]:.4f} at conf {best[1]:.4f}")
    return problems
