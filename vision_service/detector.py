"""A thin adapter over ``tritonclient.grpc`` for the face_detector model, and nothing else.

It checks the model's metadata against the contract in model_repository/face_detector/config.pbtxt, learns
the canvas size from it (so a model exported for 600x600 needs no client change), and turns Triton's
errors into the domain errors of errors.py. One client is shared by every worker thread: tritonclient
documents all of InferenceServerClient's methods as thread-safe except the streaming ones, unused here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from vision_service.errors import DetectorRejected, DetectorTimeout, DetectorUnavailable

INPUT_NAME = "IMAGE"
DETECTIONS_NAME = "DETECTIONS"
COUNT_NAME = "NUM_DETECTIONS"


@dataclass(frozen=True)
class ModelInfo:
    """What the service learns about the model at start-up (and again whenever Triton comes back)."""

    name: str
    versions: tuple[str, ...]
    canvas: int
    max_detections: int
    # The most canvases one request may carry (config.pbtxt max_batch_size); 0 = unknown (metadata lacks it).
    max_batch_size: int = 0


@dataclass(frozen=True)
class Detections:
    rows: np.ndarray  # float32 [max_detections, 5]: confidence, x_min, y_min, x_max, y_max (canvas-normalized)
    count: int
    model_version: str


class TritonDetector:
    def __init__(self, url: str, model: str, version: str = "", timeout_s: float = 5.0) -> None:
        self._model = model
        self._version = version
        self._timeout_s = timeout_s
        # Creating the client opens no connection; gRPC connects lazily and reconnects by itself after a
        # Triton restart, which is what lets the health checker flip back to SERVING without a new client.
        self._client = triton.InferenceServerClient(url=url)
        self._info: ModelInfo | None = None
        self._lock = threading.Lock()

    @property
    def info(self) -> ModelInfo | None:
        """The metadata of the last successful check, or None if the model was never seen ready."""
        return self._info

    def check(self, timeout_s: float | None = None) -> ModelInfo:
        """Ask Triton whether the model is ready and matches the contract; raise DetectorUnavailable if not."""
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            if not self._client.is_model_ready(self._model, self._version, client_timeout=timeout):
                raise DetectorUnavailable(f"Triton is up but model {self._model!r} is not ready")
            metadata = self._client.get_model_metadata(self._model, self._version, client_timeout=timeout)
            config = self._client.get_model_config(self._model, self._version, client_timeout=timeout).config
        except InferenceServerException as error:
            raise _domain_error(error) from None
        info = _validate(metadata, int(config.max_batch_size))
        with self._lock:
            self._info = info
        return info

    def detect(self, tensor: np.ndarray, *, timeout_s: float | None = None, request_id: str = "") -> Detections:
        """One letterboxed uint8 [S, S, 3] image in, the model's detections out; Triton batches concurrent calls."""
        return self.detect_batch(tensor[np.newaxis], timeout_s=timeout_s, request_id=request_id)[0]

    def detect_batch(
        self, tensors: np.ndarray, *, timeout_s: float | None = None, request_id: str = ""
    ) -> list[Detections]:
        """Several canvases (uint8 [N, S, S, 3], the views of one photo) in ONE request; one Detections per canvas.

        One request rather than N: one round trip, and the model runs the views as one batch in one forward
        pass (dynamic batching may add other photos' views to it). N is at most the model's max_batch_size.
        """
        info = self._info
        if info is None:
            raise DetectorUnavailable("the face detector has not been seen ready yet")
        expected = (info.canvas, info.canvas, 3)
        if tensors.ndim != 4 or tensors.shape[1:] != expected or tensors.dtype != np.uint8 or len(tensors) == 0:
            raise ValueError(f"expected a uint8 tensor of shape [N, *{expected}], got {tensors.dtype} {tensors.shape}")
        if info.max_batch_size and len(tensors) > info.max_batch_size:
            raise ValueError(f"{len(tensors)} canvases exceed the model's max_batch_size {info.max_batch_size}")
        image = triton.InferInput(INPUT_NAME, list(tensors.shape), "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(tensors))
        outputs = [triton.InferRequestedOutput(DETECTIONS_NAME), triton.InferRequestedOutput(COUNT_NAME)]
        try:
            result = self._client.infer(
                self._model,
                [image],
                model_version=self._version,
                outputs=outputs,
                request_id=request_id[:128],
                client_timeout=self._timeout_s if timeout_s is None else timeout_s,
            )
        except InferenceServerException as error:
            raise _domain_error(error) from None
        try:
            rows = result.as_numpy(DETECTIONS_NAME)
            counts = result.as_numpy(COUNT_NAME)
            if rows is None or counts is None:
                raise ValueError("DETECTIONS or NUM_DETECTIONS is missing")
            rows = rows.reshape(len(tensors), info.max_detections, 5)
            counts = counts.reshape(len(tensors))
            version = result.get_response().model_version
            return [
                Detections(rows=rows[i], count=min(int(counts[i]), info.max_detections), model_version=version)
                for i in range(len(tensors))
            ]
        except (ValueError, IndexError) as error:
            raise DetectorRejected(f"Triton's answer does not match the model's metadata: {error}") from None

    def close(self) -> None:
        self._client.close()


def _validate(metadata, max_batch_size: int = 0) -> ModelInfo:
    """Fail loudly at start-up if the model's tensors are not the ones this service was written for."""
    tensors = {t.name: t for t in [*metadata.inputs, *metadata.outputs]}
    problems: list[str] = []

    def expect(name: str, datatype: str, rank: int) -> list[int]:
        tensor = tensors.get(name)
        if tensor is None:
            problems.append(f"no tensor {name}")
            return []
        shape = list(tensor.shape)
        if tensor.datatype != datatype:
            problems.append(f"{name} is {tensor.datatype}, expected {datatype}")
        if len(shape) != rank + 1 or shape[0] != -1:
            problems.append(f"{name} has shape {shape}, expected a batch dimension and {rank} more")
            return []
        return shape[1:]

    image = expect(INPUT_NAME, "UINT8", 3)
    detections = expect(DETECTIONS_NAME, "FP32", 2)
    expect(COUNT_NAME, "INT32", 1)
    if image and not (image[0] == image[1] > 0 and image[2] == 3):
        problems.append(f"{INPUT_NAME} is {image}, expected a square RGB canvas [S, S, 3]")
    if detections and not (detections[0] > 0 and detections[1] == 5):
        problems.append(f"{DETECTIONS_NAME} is {detections}, expected [K, 5]")
    if problems:
        raise DetectorRejected(f"model {metadata.name!r} does not match the face detector contract: " + "; ".join(problems))
    return ModelInfo(
        name=metadata.name,
        versions=tuple(metadata.versions),
        canvas=int(image[0]),
        max_detections=int(detections[0]),
        max_batch_size=max_batch_size,
    )


def _domain_error(error: InferenceServerException) -> Exception:
    status = (error.status() or "").removeprefix("StatusCode.")
    message = f"Triton: {error.message()}"
    if status == "DEADLINE_EXCEEDED":
        return DetectorTimeout(message)
    if status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"):
        return DetectorRejected(message)
    # UNAVAILABLE (down or restarting), NOT_FOUND (model unloaded), INTERNAL/UNKNOWN (backend crashed),
    # RESOURCE_EXHAUSTED (queue full), CANCELLED: all mean "try again later" to our caller.
    return DetectorUnavailable(message)
