"""Writes variants of the face_detector model directory (another canvas, mean, prototxt...) for tests and benchmarks.

The config is edited as a parsed ``ModelConfig`` (tritonclient ships Triton's model_config proto),
not with text substitution, so a variant is always a valid config. The weights are hard-linked
when the file system allows, so a variant costs no disk space.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from face_model.artifact import ARTIFACT_NAME

MODEL_NAME = "face_detector"


def write_face_detector_variant(
    source_repository: Path,
    destination_repository: Path,
    *,
    name: str = MODEL_NAME,
    canvas_size: int | tuple[int, int] | None = None,
    mean_bgr: Sequence[float] | None = None,
    prototxt: str | None = None,
    prior_steps: str | None = None,
    num_threads: int | None = None,
    max_batch_size: int | None = None,
    instance_count: int | None = None,
    max_queue_delay_us: int | None = None,
) -> Path:
    """Copies ``source_repository/face_detector`` to ``destination_repository/<name>`` with the given changes.

    Returns the model directory. Settings left as None keep the source config's values.
    """
    from tritonclient.grpc import model_config_pb2  # only this helper needs Triton's config proto

    source = source_repository / MODEL_NAME
    config = text_format.Parse((source / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    config.name = name
    if canvas_size is not None:
        height, width = (canvas_size, canvas_size) if isinstance(canvas_size, int) else canvas_size
        del config.input[0].dims[:]
        config.input[0].dims.extend([height, width, 3])
    if mean_bgr is not None:
        config.parameters["MEAN_BGR"].string_value = ",".join(f"{float(v):g}" for v in mean_bgr)
    if prototxt is not None:
        config.parameters["PROTOTXT"].string_value = prototxt
    if prior_steps is not None:
        config.parameters["PRIOR_STEPS"].string_value = prior_steps
    if num_threads is not None:
        config.parameters["NUM_THREADS"].string_value = str(num_threads)
    if max_batch_size is not None:
        config.max_batch_size = max_batch_size
    if instance_count is not None:
        config.instance_group[0].count = instance_count
    if max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us

    target = destination_repository / name
    target.mkdir(parents=True, exist_ok=False)
    (target / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
    for version in sorted(p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
        (target / version.name).mkdir()
        shutil.copy2(version / "model.py", target / version.name / "model.py")
        weights = version / ARTIFACT_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; build it with `make model`")
        try:
            os.link(weights, target / version.name / ARTIFACT_NAME)
        except OSError:
            shutil.copy2(weights, target / version.name / ARTIFACT_NAME)
    return target
