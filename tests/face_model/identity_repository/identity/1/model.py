"""Returns each request's tensors unchanged, crossing the stub boundary the way face_detector does (DLPack).

Requests are concatenated and split back, as face_detector batches them, so a mix-up of requests
within a dynamic batch would show as a wrong echo.
"""

from __future__ import annotations

from typing import Any

import torch
import triton_python_backend_utils as pb_utils

NAMES = (("U8", "U8_OUT"), ("F32", "F32_OUT"))


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = {
            name: [torch.from_dlpack(pb_utils.get_input_tensor_by_name(r, name).to_dlpack()) for r in requests]
            for name, _ in NAMES
        }
        merged = {name: torch.cat(tensors) if len({t.shape[1:] for t in tensors}) == 1 else None for name, tensors in inputs.items()}
        responses = []
        for index in range(len(requests)):
            outputs = []
            for name, out_name in NAMES:
                tensors = inputs[name]
                if merged[name] is not None:
                    start = sum(t.shape[0] for t in tensors[:index])
                    tensor = merged[name][start : start + tensors[index].shape[0]]
                else:
                    tensor = tensors[index].clone()
                outputs.append(pb_utils.Tensor.from_dlpack(out_name, tensor.contiguous()))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
