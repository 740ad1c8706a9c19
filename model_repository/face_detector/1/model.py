"""Triton python-backend model: the SSD face detector (face_model.ssd.FaceSSD) on CPU or GPU.

The network code is the ``face_model`` package, imported like any library: the Triton image
pip-installs the project; the local launcher (``python -m face_model.triton_local``) runs the stub
on this venv and passes the repository root in PYTHONPATH, which the lines below honour. Only the
weights artifact (``make model``) lives here.

Settings come from config.pbtxt: the canvas is the IMAGE input's dims (priors are computed for it
at load), ``parameters`` give MEAN_BGR, PROTOTXT ("deploy" or "trained"), PRIOR_STEPS
("prototxt" or "canvas", see face_model.ssd.adapt_prior_step) and NUM_THREADS, and the
instance group's kind picks the device (KIND_GPU -> cuda:<device id>, anything else -> CPU).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any

# The backend stub runs Python isolated (-I), which ignores PYTHONPATH; honour it here as a normal
# interpreter would, so face_model imports from a source checkout (the launcher sets it).
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _entry and os.path.isabs(_entry) and _entry not in sys.path:
        sys.path.append(_entry)

import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

try:
    from face_model.artifact import ARTIFACT_NAME, DEFAULT_PROTOTXT_VARIANT, load_face_ssd
    from face_model.ssd import DEFAULT_MEAN_BGR, DEFAULT_PRIOR_STEPS, PRIOR_STEP_MODES
except ImportError as error:  # pragma: no cover - depends on how Triton was started
    raise ImportError(
        "face_detector needs the face_model package: pip-install the project, or start Triton with "
        "`python -m face_model.triton_local`, which puts the repository root on PYTHONPATH"
    ) from error

INPUT = "IMAGE"
OUTPUT_DETECTIONS = "DETECTIONS"
OUTPUT_COUNT = "NUM_DETECTIONS"


def _parameter(config: dict[str, Any], key: str) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _parse_mean(text: str | None) -> tuple[float, float, float]:
    if text is None:
        return DEFAULT_MEAN_BGR
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f'parameter MEAN_BGR must be three numbers "B,G,R", got {text!r}')
    return values  # type: ignore[return-value]


def _parse_threads(text: str | None) -> int:
    if text is None:
        # The cores this process may run on; in a container with a CPU quota, set NUM_THREADS to the limit.
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"parameter NUM_THREADS must be a positive integer, got {text!r}")
    return int(text)


class TritonPythonModel:
    """One instance per instance_group entry; each holds its own copy of the network."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        inputs = {i["name"]: i for i in config["input"]}
        outputs = {o["name"]: o for o in config["output"]}
        if set(inputs) != {INPUT} or set(outputs) != {OUTPUT_DETECTIONS, OUTPUT_COUNT}:
            raise pb_utils.TritonModelException(
                f"face_detector expects input {INPUT} and outputs {OUTPUT_DETECTIONS}, {OUTPUT_COUNT}"
            )
        dims = [int(d) for d in inputs[INPUT]["dims"]]
        if len(dims) != 3 or dims[2] != 3 or inputs[INPUT]["data_type"] != "TYPE_UINT8":
            raise pb_utils.TritonModelException(f"{INPUT} must be TYPE_UINT8 [height, width, 3], got {dims}")
        self.canvas_hw = (dims[0], dims[1])

        if args.get("model_instance_kind") == "GPU":
            if not torch.cuda.is_available():
                raise pb_utils.TritonModelException("instance kind is KIND_GPU but torch sees no CUDA device")
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(_parse_threads(_parameter(config, "NUM_THREADS")))

        prior_steps = _parameter(config, "PRIOR_STEPS") or DEFAULT_PRIOR_STEPS
        if prior_steps not in PRIOR_STEP_MODES:
            raise pb_utils.TritonModelException(f"parameter PRIOR_STEPS must be one of {PRIOR_STEP_MODES}, got {prior_steps!r}")

        weights = Path(args["model_repository"]) / args["model_version"] / ARTIFACT_NAME
        self.model = load_face_ssd(
            weights,
            canvas_size=self.canvas_hw,
            mean_bgr=_parse_mean(_parameter(config, "MEAN_BGR")),
            prototxt_variant=_parameter(config, "PROTOTXT") or DEFAULT_PROTOTXT_VARIANT,
            prior_steps=prior_steps,
            device=self.device,
        )
        assert self.model.detection_params is not None
        keep_top_k = self.model.detection_params.keep_top_k
        if [int(d) for d in outputs[OUTPUT_DETECTIONS]["dims"]] != [keep_top_k, 5]:
            raise pb_utils.TritonModelException(f"{OUTPUT_DETECTIONS} dims must be [{keep_top_k}, 5] (keep_top_k)")
        pb_utils.Logger.log_info(
            f"face_detector ready on {self.device}: canvas {self.canvas_hw[0]}x{self.canvas_hw[1]}, "
            f"{self.model.priors.shape[0]} priors (steps: {prior_steps}), threads {torch.get_num_threads()}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """All requests' images go through ONE forward pass; responses come back in request order.

        Tensors cross the stub boundary through DLPack, never ``as_numpy()`` / ``Tensor(name, ndarray)``:
        the wheel's stub was built with a pybind11 that predates NumPy 2 and reads NumPy 2 dtypes with
        the old struct layout (inputs arrive as stride-0 views, outputs leave empty). DLPack avoids
        NumPy altogether and copies nothing on the way in.
        """
        responses: list[Any] = [None] * len(requests)
        batches: list[torch.Tensor] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            images = torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT).to_dlpack())
            if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (*self.canvas_hw, 3):
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"{INPUT} must be uint8 [batch, {self.canvas_hw[0]}, {self.canvas_hw[1]}, 3], "
                        f"got {images.dtype} {list(images.shape)}"
                    )
                )
                continue
            batches.append(images)
            owners.append(index)
        if not batches:
            return responses

        try:
            stacked = torch.cat(batches).to(self.device, non_blocking=True)
            with torch.inference_mode():
                detections, counts = self.model(stacked)
            detections = detections.cpu()
            counts = counts.cpu().to(torch.int32).reshape(-1, 1)
        except Exception as error:  # noqa: BLE001 - every request gets the failure as its own error
            for index in owners:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {error}"))
            return responses

        start = 0
        for index, images in zip(owners, batches):
            end = start + images.shape[0]
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor.from_dlpack(OUTPUT_DETECTIONS, detections[start:end].contiguous()),
                    pb_utils.Tensor.from_dlpack(OUTPUT_COUNT, counts[start:end].contiguous()),
                ]
            )
            start = end
        return responses

    def finalize(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        # Once this returns the stub has answered Triton and only exits, and an interpreter that imported
        # torch takes about 1.5 s to tear its modules down. Triton unloads the instances one after another,
        # so a stop took over 5 s: longer than `make run`'s honcho waits before SIGKILLing everything. Exit
        # at interpreter shutdown instead, before that teardown; nothing is left to flush but the logs.
        atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
