"""The gateway's service channels spread calls over every address a target names (round_robin), so replicas
behind one name (a headless Service: ``dns:///audio-headless:50051``) all get work.

Two real audio services behind one target, told apart by their duration caps: the one with a 1 s cap
answers the 4 s voice note OUT_OF_RANGE, the other converts it. gRPC's default policy (pick_first) would send
every call to the first address, and only one kind of answer would come back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from audio_service.config import Settings as AudioSettings
from audio_service.server import create_server
from gateway.audio_client import AudioClient
from gateway.config import Settings
from gateway.services import make_channel
from mediabot import limits
from mediabot.grpc_server import GrpcServer
from mediabot.v1 import audio_pb2


@pytest.fixture
def two_audio_services(audio_settings: AudioSettings) -> Iterator[str]:
    """One target for two services: ``ipv4:127.0.0.1:P1,127.0.0.1:P2`` (what a DNS name with two addresses is
    to the channel)."""
    servers: list[GrpcServer] = [
        create_server(replace(audio_settings, max_duration_s=1.0)),
        create_server(audio_settings),
    ]
    for server in servers:
        server.start()
    try:
        yield "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
    finally:
        for server in servers:
            server.stop(0).wait(5)


def test_calls_reach_every_address_of_the_target(two_audio_services: str, voice_note: Path) -> None:
    settings = Settings.from_env({"AUDIO_SERVICE_ADDR": two_audio_services})
    channel = make_channel(settings, settings.audio_service_addr, "mediabot.v1.AudioService",
                           limits.max_request_bytes(), limits.max_audio_response_bytes())
    note = voice_note.read_bytes()
    request = audio_pb2.ConvertToWavRequest(content_type="audio/ogg", sample_rate_hz=16000, channels=1, request_id="lb")
    answers: list[str] = []
    with channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        for _ in range(12):
            try:
                AudioClient(channel).convert(note, request, timeout=30)
                answers.append("converted")
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.OUT_OF_RANGE, error
                answers.append("over the cap")
    # Both services answered, about evenly (round_robin alternates once both connections are up).
    assert answers.count("converted") >= 4 and answers.count("over the cap") >= 4, answers
