"""The torch port built straight from the installed wheel's Caffe files, cached per test session."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from face_model import caffe_pb2
from face_model.caffemodel import (
    ReferenceFiles,
    locate_reference_files,
    read_caffemodel,
    read_prototxt,
    read_weights,
    with_trained_geometry,
)
from face_model.ssd import DEFAULT_MEAN_BGR, DEFAULT_PRIOR_STEPS, FaceSSD

SERVED_CONFIG = Path(__file__).resolve().parents[2] / "model_repository" / "face_detector" / "config.pbtxt"


@dataclass(frozen=True)
class ServedSettings:
    """What the committed config.pbtxt asks Triton to serve, so tests compare against that very model."""

    canvas: int
    variant: str
    mean_bgr: tuple[float, float, float]
    prior_steps: str


@functools.cache
def served() -> ServedSettings:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(SERVED_CONFIG.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    height, width, _ = config.input[0].dims
    assert height == width, "the tests assume a square canvas"
    mean = tuple(float(v) for v in config.parameters["MEAN_BGR"].string_value.split(","))
    steps = config.parameters["PRIOR_STEPS"].string_value if "PRIOR_STEPS" in config.parameters else DEFAULT_PRIOR_STEPS
    return ServedSettings(int(height), config.parameters["PROTOTXT"].string_value, mean, steps)  # type: ignore[arg-type]


@functools.cache
def reference_files() -> ReferenceFiles:
    return locate_reference_files()


@functools.cache
def _weights() -> dict[str, list[np.ndarray]]:
    return read_weights(reference_files().caffemodel)


def net(variant: str = "deploy") -> caffe_pb2.NetParameter:
    deploy = read_prototxt(reference_files().prototxt)
    if variant == "deploy":
        return deploy
    if variant == "trained":
        return with_trained_geometry(deploy, read_caffemodel(reference_files().caffemodel))
    raise ValueError(variant)


def write_prototxt(path: Path, variant: str = "trained", steps: dict[str, float] | None = None) -> Path:
    """A prototxt for OpenCV: the variant, with the given PriorBox steps written in by hand (the
    reference for FaceSSD's "canvas" prior steps, independent of face_model.ssd.adapt_prior_step)."""
    from google.protobuf import text_format

    edited = net(variant)
    wanted = dict(steps or {})
    for layer in edited.layer:
        if layer.name in wanted:
            layer.prior_box_param.step = wanted.pop(layer.name)
    assert not wanted, f"no such PriorBox layers: {sorted(wanted)}"
    path.write_text(text_format.MessageToString(edited), encoding="utf-8")
    return path


# The steps FaceSSD's "canvas" mode gives the trained geometry at 600 (maps 8x8 and 6x6): 600/8, 600/6.
TRAINED_600_STEPS = {"conv8_2_mbox_priorbox": 75.0, "conv9_2_mbox_priorbox": 100.0}


@functools.cache
def face_ssd(
    canvas: int | tuple[int, int] = 300,
    variant: str = "deploy",
    mean_bgr: tuple[float, float, float] = DEFAULT_MEAN_BGR,
    prior_steps: str = DEFAULT_PRIOR_STEPS,
    *,
    optimized: bool = True,
) -> FaceSSD:
    """By default the model as Triton serves it (``optimize_for_inference``); ``optimized=False`` is the
    layer-for-layer Caffe transcription."""
    model = FaceSSD(net(variant), canvas_size=canvas, mean_bgr=mean_bgr, prior_steps=prior_steps)
    model.load_caffe_weights(_weights())
    model = model.eval().requires_grad_(False)
    return model.optimize_for_inference() if optimized else model


def detect(model: FaceSSD, canvases: list[np.ndarray]) -> list[np.ndarray]:
    """Runs the model on RGB uint8 canvases; returns each image's real detection rows as a numpy array."""
    with torch.inference_mode():
        detections, counts = model(torch.from_numpy(np.stack(canvases)))
    return [detections[i, : int(counts[i])].numpy() for i in range(len(canvases))]
