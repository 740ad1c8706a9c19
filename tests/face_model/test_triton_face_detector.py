"""face_detector served by the real Triton gives what the in-process torch module gives, however requests arrive.

Compared within 1e-5 (confidence and normalized box coordinates), not bit for bit: the server runs
the same module on the same CPU, but oneDNN may pick different kernels for a batch of 1 and of 8.
The transport itself is bit-exact (test_triton_transport.py).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from face_model.repository import write_face_detector_variant
from tests.face_model.images import letterbox, rgb
from tests.face_model.models import detect, face_ssd, served
from bench.support import MODEL_REPOSITORY
from tests.fixtures.triton import TritonServer

TOLERANCE = 1e-5
PHOTOS = ("friends", "astronaut", "chelsea_cat", "zidane", "bus", "grace_hopper", "coins", "small_luispedro_on_rocket_4")


def _client(server: TritonServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def _infer(server: TritonServer, images: np.ndarray, model: str = "face_detector") -> list[np.ndarray]:
    """One request with a batch of images; each image's real detection rows."""
    request = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    request.set_data_from_numpy(images)
    result = _client(server).infer(model, [request], client_timeout=120)
    detections, counts = result.as_numpy("DETECTIONS"), result.as_numpy("NUM_DETECTIONS")
    assert detections.shape == (len(images), 200, 5) and counts.shape == (len(images), 1)
    for row, count in zip(detections, counts[:, 0]):
        assert not row[count:].any(), "rows past NUM_DETECTIONS must be zeros"
    return [row[:count] for row, count in zip(detections, counts[:, 0])]


def _assert_same(served: np.ndarray, local: np.ndarray) -> None:
    assert served.shape == local.shape
    np.testing.assert_allclose(served, local, rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module")
def canvases() -> dict[str, np.ndarray]:
    return {name: letterbox(rgb(name), served().canvas) for name in PHOTOS}


@pytest.fixture(scope="module")
def expected(canvases: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = face_ssd(served().canvas, served().variant, served().mean_bgr, served().prior_steps)
    return {name: detect(model, [canvas])[0] for name, canvas in canvases.items()}


def test_metadata_is_the_contract_the_vision_service_checks(triton_server_running: TritonServer) -> None:
    client = _client(triton_server_running)
    metadata = client.get_model_metadata("face_detector", as_json=True)
    side = str(served().canvas)
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "UINT8", "shape": ["-1", side, side, "3"]}]
    assert sorted((o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]) == [
        ("DETECTIONS", "FP32", ["-1", "200", "5"]),
        ("NUM_DETECTIONS", "INT32", ["-1", "1"]),
    ]
    config = client.get_model_config("face_detector", as_json=True)["config"]
    assert int(config["max_batch_size"]) >= 32 and "dynamic_batching" in config


def test_one_image_matches_the_torch_module(triton_server_running: TritonServer, canvases, expected) -> None:
    for name in ("friends", "chelsea_cat"):
        (served,) = _infer(triton_server_running, canvases[name][None])
        _assert_same(served, expected[name])
    assert len(expected["friends"]) > 0


def test_a_batch_in_one_request_gives_each_image_its_own_result(triton_server_running: TritonServer, canvases, expected) -> None:
    served = _infer(triton_server_running, np.stack([canvases[name] for name in PHOTOS]))
    for name, rows in zip(PHOTOS, served):
        _assert_same(rows, expected[name])


def test_concurrent_requests_each_get_their_own_result(triton_server_running: TritonServer, canvases, expected) -> None:
    order = [PHOTOS[i % len(PHOTOS)] for i in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda name: _infer(triton_server_running, canvases[name][None])[0], order))
    for name, rows in zip(order, results):
        _assert_same(rows, expected[name])


@pytest.mark.parametrize(
    ("images", "datatype", "message"),
    [
        (np.zeros((1, served().canvas - 1, served().canvas, 3), np.uint8), "UINT8", "shape"),
        (np.zeros((1, served().canvas, served().canvas, 3), np.float32), "FP32", "data-type"),
        (np.zeros((33, served().canvas, served().canvas, 3), np.uint8), "UINT8", "batch"),
    ],
)
def test_bad_requests_get_an_error_and_the_server_keeps_serving(
    triton_server_running: TritonServer, canvases, expected, images: np.ndarray, datatype: str, message: str
) -> None:
    request = grpcclient.InferInput("IMAGE", list(images.shape), datatype)
    request.set_data_from_numpy(images)
    with pytest.raises(InferenceServerException, match=message):
        _client(triton_server_running).infer("face_detector", [request], client_timeout=60)
    _assert_same(_infer(triton_server_running, canvases["friends"][None])[0], expected["friends"])


def test_variant_repository_with_another_canvas_and_deterministic_batching(
    triton_factory: Callable[[Path], TritonServer], tmp_path: Path
) -> None:
    """The canvas is a property of the served model (config dims); a long queue delay makes batching certain."""
    other = 300 if served().canvas != 300 else 600
    write_face_detector_variant(MODEL_REPOSITORY, tmp_path, name="faces_other", canvas_size=other, max_queue_delay_us=500_000)
    server = triton_factory(tmp_path)
    names = ("friends", "small_grace_hopper_on_coffee_8", "zidane", "coffee")
    canvases = {name: letterbox(rgb(name), other) for name in names}
    model = face_ssd(other, served().variant, served().mean_bgr, served().prior_steps)
    expected = {name: detect(model, [canvas])[0] for name, canvas in canvases.items()}

    client = _client(server)
    before = client.get_inference_statistics("faces_other", as_json=True)["model_stats"][0]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(lambda name: _infer(server, canvases[name][None], "faces_other")[0], names))
    for name, rows in zip(names, results):
        _assert_same(rows, expected[name])
    after = client.get_inference_statistics("faces_other", as_json=True)["model_stats"][0]
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inferences == len(names)
    assert executions < inferences, "concurrent requests should share forward passes"
