"""The gateway and a real audio service agree on what is final and what is not (issue #12).

- A full service queue (gRPC's RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded") is a burst, not the
  voice note: the item is kept in the spool for a retry, and the sender is not told it was too big.
- A note over the service's duration cap is OUT_OF_RANGE: the final "too long or too big" reply.
- Both read AUDIO_MAX_DURATION_S, so a cap above ~35 minutes (a WAV over the gateway's former fixed 64 MiB
  receive limit) still comes back whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from flask import Flask
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audio_service.config import Settings as AudioSettings
from audio_service.server import create_server
from gateway import replies
from mediabot.grpc_server import GrpcServer
from tests.audio_service.helpers import wait_until
from tests.fixtures.audio import make_silence_flac
from tests.fixtures.gateway import MediaServer, media_form, reply_of, signed_post, spooled, stored_files


CONVERT = "/mediabot.v1.AudioService/ConvertToWav"


def health_code(address: str) -> grpc.StatusCode:
    """The status a Health.Check gets from ``address`` (OK when answered)."""
    with grpc.insecure_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.fixture
def start_audio(audio_settings: AudioSettings) -> Iterator[Callable[..., str]]:
    """``start_audio(**settings) -> address``: a real audio service of its own; stopped at teardown."""
    servers: list[GrpcServer] = []

    def start(**overrides: object) -> str:
        server = create_server(replace(audio_settings, **overrides))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop(0).wait(5)


def test_a_full_queue_is_retried_later_not_called_too_big(
    start_audio: Callable[..., str], make_gateway: Callable[..., Flask], media_server: MediaServer,
    media_root: Path, voice_note: Path,
) -> None:
    # One call at a time, none queued, and that one place taken by a client whose upload has not arrived yet
    # (gRPC counts a call from its headers; the servicer waits in a worker thread for the request message).
    address = start_audio(workers=1, max_queued=0)
    uploaded = threading.Event()

    def slow_upload() -> Iterator[bytes]:
        uploaded.wait(30)
        yield b""

    with grpc.insecure_channel(address) as channel:
        upload = channel.stream_unary(CONVERT, request_serializer=None, response_deserializer=None)

        def hold_the_only_slot() -> grpc.Future:
            # The held call can itself be refused when it reaches the server while one of our health checks
            # is still counted there (gRPC counts a call until its done-callback has run): then hold again.
            for _ in range(20):
                pending = upload.future(slow_upload(), timeout=60)
                if wait_until(lambda: pending.done() or health_code(address) is grpc.StatusCode.RESOURCE_EXHAUSTED) \
                        and not pending.done():
                    return pending
            raise AssertionError("could not hold the audio service's only call slot")

        try:
            pending = hold_the_only_slot()
            app = make_gateway(AUDIO_SERVICE_ADDR=address)
            url = media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
            form = media_form([(url, "audio/ogg")])
            reply = reply_of(signed_post(app.test_client(), form))
        finally:
            uploaded.set()
        assert pending.exception() is not None  # an empty request: INVALID_ARGUMENT, after the test's call
    assert reply == replies.RECEIVED_VOICE, reply  # not AUDIO_TOO_BIG
    assert spooled(media_root) == [form["MessageSid"]]
    assert stored_files(media_root) == []


def test_a_note_over_the_duration_cap_is_final(
    start_audio: Callable[..., str], make_gateway: Callable[..., Flask], media_server: MediaServer,
    media_root: Path, voice_note: Path,
) -> None:
    address = start_audio(max_duration_s=1.0)  # the voice note is about 4 s
    app = make_gateway(AUDIO_SERVICE_ADDR=address)
    url = media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    assert reply_of(signed_post(app.test_client(), media_form([(url, "audio/ogg")]))) == replies.AUDIO_TOO_BIG
    assert spooled(media_root) == []
    assert stored_files(media_root) == []


def test_a_40_minute_cap_holds_on_both_sides(
    start_audio: Callable[..., str], make_gateway: Callable[..., Flask], media_server: MediaServer,
    media_root: Path, tmp_path: Path,
) -> None:
    """39 minutes at 16 kHz mono is a 75 MB WAV: over the 64 MiB the gateway used to hard-code."""
    address = start_audio(max_duration_s=2400.0)
    app = make_gateway(AUDIO_SERVICE_ADDR=address, AUDIO_MAX_DURATION_S="2400", AUDIO_RPC_TIMEOUT_S="10")
    note = make_silence_flac(tmp_path, 39 * 60).read_bytes()
    url = media_server.add("/long", body=note, content_type="audio/flac")
    reply = reply_of(signed_post(app.test_client(), media_form([(url, "audio/flac")])))
    assert reply == replies.saved_audio(39 * 60 * 1000), reply
    (wav,) = [p for p in stored_files(media_root) if p.suffix == ".wav"]
    assert (media_root / wav).stat().st_size == 44 + 39 * 60 * 16000 * 2 > 64 * 1024 * 1024
