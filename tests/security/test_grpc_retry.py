"""The gateway's channels retry UNAVAILABLE a bounded number of times (gRPC service config, no hand loop),
also for requests as large as a voice note, and never retry a final answer such as INVALID_ARGUMENT.

The server here is a real gRPC server whose AudioService answers by script, because the point is the
client's behaviour on a given status code, which a real converter cannot be made to produce on cue.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from gateway.config import Settings
from gateway.services import make_channel, service_config
from mediabot.v1 import audio_pb2, audio_pb2_grpc


class ScriptedAudio(audio_pb2_grpc.AudioServiceServicer):
    def __init__(self) -> None:
        self.script: list[grpc.StatusCode] = []
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def ConvertToWav(self, request, context):  # noqa: ANN001, ANN201, N802
        with self.lock:
            self.calls.append(len(request.audio))
            code = self.script.pop(0) if self.script else grpc.StatusCode.INVALID_ARGUMENT
        context.abort(code, f"scripted {code.name}")


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedAudio, str]]:
    servicer = ScriptedAudio()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    audio_pb2_grpc.add_AudioServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def stub(address: str, attempts: int) -> tuple[grpc.Channel, audio_pb2_grpc.AudioServiceStub]:
    settings = Settings.from_env({"GRPC_MAX_ATTEMPTS": str(attempts)})
    channel = make_channel(settings, address, "mediabot.v1.AudioService", 20 * 1024 * 1024, 4 * 1024 * 1024)
    return channel, audio_pb2_grpc.AudioServiceStub(channel)


@pytest.mark.parametrize("size", [100, 5 * 1024 * 1024])
def test_unavailable_is_retried_then_the_final_answer_stands(scripted: tuple[ScriptedAudio, str], size: int) -> None:
    servicer, address = scripted
    servicer.script = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    channel, audio = stub(address, attempts=3)
    with channel, pytest.raises(grpc.RpcError) as raised:
        audio.ConvertToWav(audio_pb2.ConvertToWavRequest(audio=b"\0" * size), timeout=10)
    # Two UNAVAILABLE, then the third attempt's INVALID_ARGUMENT, which is not retried.
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.calls == [size, size, size]


def test_retries_are_bounded(scripted: tuple[ScriptedAudio, str]) -> None:
    servicer, address = scripted
    servicer.script = [grpc.StatusCode.UNAVAILABLE] * 10
    channel, audio = stub(address, attempts=2)
    with channel, pytest.raises(grpc.RpcError) as raised:
        audio.ConvertToWav(audio_pb2.ConvertToWavRequest(audio=b"x"), timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(servicer.calls) == 2


def test_one_attempt_means_no_retry_policy() -> None:
    # Only the balancing policy (tests/gateway/test_balancing.py) is left.
    assert json.loads(service_config("mediabot.v1.AudioService", 1)) == {"loadBalancingConfig": [{"round_robin": {}}]}
