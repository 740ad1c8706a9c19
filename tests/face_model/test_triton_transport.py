"""Known tensors through the real tritonserver and its python backend stub, compared bit for bit.

This is what caught the wheel's stub mangling NumPy 2 arrays (``as_numpy()`` gave stride-0 views,
outputs came back empty); both models now cross the stub with DLPack, and this test keeps it so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.fixtures.triton import TritonServer

IDENTITY_REPOSITORY = Path(__file__).parent / "identity_repository"
# A batch of 4 face_detector-sized images: 1 MB, past the stub's default shared-memory region.
U8_LENGTH = 300 * 300 * 3


def _u8_batch(seed: int, batch: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(batch, U8_LENGTH), dtype=np.uint8)
    data[0, :256] = np.arange(256, dtype=np.uint8)  # every byte value
    data[-1, :2] = (0, 255)
    return data


def _f32_batch(seed: int, batch: int = 4) -> np.ndarray:
    """Edge values by bit pattern (signed zeros, subnormals, extremes, infinities, NaNs with payloads) and random bits."""
    edges = np.array(
        [
            0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF,
            0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FC00001, 0xFFFFFFFF, 0x7F800001, 0x40490FDB,
        ],
        dtype=np.uint32,
    )
    bits = np.random.default_rng(seed).integers(0, 2**32, size=(batch, 4096), dtype=np.uint32)
    bits[:, : edges.size] = edges
    return bits.view(np.float32)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """One server for the module (the restart test leaves it running); the same class triton_factory uses."""
    server = TritonServer(IDENTITY_REPOSITORY, log_path=tmp_path_factory.mktemp("identity") / "tritonserver.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_factory_serves_a_temporary_repository(triton_factory: Callable[[Path], TritonServer], tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(IDENTITY_REPOSITORY, repository)
    server = triton_factory(repository)
    assert server.running and server.load_seconds > 0
    u8, f32 = _u8_batch(5, 1), _f32_batch(5, 1)
    _assert_same_bits(_grpc_echo(server.grpc_url, u8, f32), u8, f32)


def _grpc_echo(url: str, u8: np.ndarray, f32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A private subchannel: gRPC otherwise shares connections process-wide, and one that failed while
    # Triton was down stays in reconnect backoff (refusing at once) for a while after it is back.
    client = grpcclient.InferenceServerClient(url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    inputs = [grpcclient.InferInput("U8", list(u8.shape), "UINT8"), grpcclient.InferInput("F32", list(f32.shape), "FP32")]
    inputs[0].set_data_from_numpy(u8)
    inputs[1].set_data_from_numpy(f32)
    result = client.infer("identity", inputs, client_timeout=60)
    return result.as_numpy("U8_OUT"), result.as_numpy("F32_OUT")


def _assert_same_bits(echo: tuple[np.ndarray, np.ndarray], u8: np.ndarray, f32: np.ndarray) -> None:
    assert echo[0].dtype == np.uint8 and echo[0].shape == u8.shape
    assert echo[1].dtype == np.float32 and echo[1].shape == f32.shape
    assert echo[0].tobytes() == u8.tobytes()
    assert echo[1].view(np.uint32).tobytes() == f32.view(np.uint32).tobytes()


def test_grpc_round_trip_is_bit_exact(identity: TritonServer) -> None:
    u8, f32 = _u8_batch(1), _f32_batch(1)
    _assert_same_bits(_grpc_echo(identity.grpc_url, u8, f32), u8, f32)


def test_http_binary_round_trip_is_bit_exact(identity: TritonServer) -> None:
    u8, f32 = _u8_batch(2, batch=2), _f32_batch(2, batch=2)
    client = httpclient.InferenceServerClient(identity.http_url)
    inputs = [httpclient.InferInput("U8", list(u8.shape), "UINT8"), httpclient.InferInput("F32", list(f32.shape), "FP32")]
    inputs[0].set_data_from_numpy(u8, binary_data=True)
    inputs[1].set_data_from_numpy(f32, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("U8_OUT", "F32_OUT")]
    result = client.infer("identity", inputs, outputs=outputs)
    _assert_same_bits((result.as_numpy("U8_OUT"), result.as_numpy("F32_OUT")), u8, f32)


def test_concurrent_requests_each_get_their_own_tensors_back(identity: TritonServer) -> None:
    """Sent together, they are batched into shared executes; every echo must still be its own request's data."""
    requests = [(_u8_batch(10 + i, batch=1 + i % 3), _f32_batch(10 + i, batch=1 + i % 3)) for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        echoes = list(pool.map(lambda pair: _grpc_echo(identity.grpc_url, *pair), requests))
    for echo, (u8, f32) in zip(echoes, requests):
        _assert_same_bits(echo, u8, f32)


def test_fixture_stops_and_restarts_on_the_same_ports(identity: TritonServer) -> None:
    url = identity.grpc_url
    assert identity.stop() == 0
    assert not identity.running
    with pytest.raises(InferenceServerException) as stopped:
        _grpc_echo(url, _u8_batch(3, 1), _f32_batch(3, 1))
    assert "unavailable" in str(stopped.value).lower()
    identity.start()
    assert identity.grpc_url == url
    u8, f32 = _u8_batch(4, 1), _f32_batch(4, 1)
    _assert_same_bits(_grpc_echo(url, u8, f32), u8, f32)


def test_the_server_listens_on_loopback_only(identity: TritonServer) -> None:
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in listening.splitlines() if f"pid={identity.process.pid}," in line]
    assert len(ours) == 3, listening
    # gRPC listens on an IPv6 socket bound to the IPv4-mapped loopback address: still loopback only.
    assert all(" 127.0.0.1:" in line or " [::ffff:127.0.0.1]:" in line for line in ours), ours
