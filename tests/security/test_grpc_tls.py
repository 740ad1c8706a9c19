"""Optional TLS and mTLS on the internal gRPC channels, with certificates made in the test, on loopback.

The gateway's /readyz makes a real health RPC over its configured channel, so its answer says whether the
handshake worked; a voice note converted over TLS shows the data path works too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from flask import Flask

from audio_service.config import Settings as AudioSettings
from audio_service.server import create_server as create_audio_server
from gateway import GatewayStartupError
from mediabot.config import ConfigError
from mediabot.grpc_server import GrpcServer
from mediabot.grpc_tls import server_credentials
from tests.fixtures.gateway import MediaServer, media_form, reply_of, signed_post
from tests.security.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_audio(audio_settings: AudioSettings) -> Iterator[Callable[..., str]]:
    servers: list[GrpcServer] = []

    def start(**tls: str) -> str:
        server = create_audio_server(dataclasses.replace(audio_settings, listen="127.0.0.1:0", **tls))
        port = server.port
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


def audio_readiness(app: Flask) -> str:
    return app.test_client().get("/readyz").get_json()["dependencies"]["audio"]


def test_tls_server_and_client(start_audio: Callable[..., str], make_gateway: Callable[..., Flask], pki: Pki,
                               media_server: MediaServer, voice_note: Path) -> None:
    address = start_audio(tls_cert_file=str(pki.server.cert), tls_key_file=str(pki.server.key))
    app = make_gateway(AUDIO_SERVICE_ADDR=address, GRPC_TLS_CA_FILE=pki.ca)
    assert audio_readiness(app) == "SERVING"
    url = media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg")
    assert reply_of(signed_post(app.test_client(), media_form([(url, "audio/ogg")]))).startswith(
        "Saved your voice message"
    )
    # A plaintext client cannot talk to it at all.
    assert audio_readiness(make_gateway(AUDIO_SERVICE_ADDR=address)) == "UNAVAILABLE"


def test_a_tls_client_refuses_a_server_its_ca_did_not_sign(
    start_audio: Callable[..., str], make_gateway: Callable[..., Flask], pki: Pki
) -> None:
    address = start_audio(tls_cert_file=str(pki.stranger.cert), tls_key_file=str(pki.stranger.key))
    assert audio_readiness(make_gateway(AUDIO_SERVICE_ADDR=address, GRPC_TLS_CA_FILE=pki.ca)) == "UNAVAILABLE"


def test_mtls_admits_only_clients_with_a_certificate_from_the_client_ca(
    start_audio: Callable[..., str], make_gateway: Callable[..., Flask], pki: Pki
) -> None:
    address = start_audio(tls_cert_file=str(pki.server.cert), tls_key_file=str(pki.server.key),
                          tls_client_ca_file=str(pki.ca))
    tls = {"AUDIO_SERVICE_ADDR": address, "GRPC_TLS_CA_FILE": pki.ca}
    assert audio_readiness(make_gateway(**tls)) == "UNAVAILABLE"  # no client certificate
    stranger = make_gateway(**tls, GRPC_TLS_CERT_FILE=pki.stranger.cert, GRPC_TLS_KEY_FILE=pki.stranger.key)
    assert audio_readiness(stranger) == "UNAVAILABLE"
    client = make_gateway(**tls, GRPC_TLS_CERT_FILE=pki.client.cert, GRPC_TLS_KEY_FILE=pki.client.key)
    assert audio_readiness(client) == "SERVING"


def test_vision_service_serves_tls_from_its_settings(pki: Pki) -> None:
    """Same module on the vision side; no Triton needed: the health answer (NOT_SERVING) proves the handshake."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.fixtures.vision import vision_settings
    from vision_service.server import create_server

    settings = vision_settings("127.0.0.1:1", tls_cert_file=str(pki.server.cert), tls_key_file=str(pki.server.key),
                               tls_client_ca_file=str(pki.ca))
    server = create_server(settings)
    port = server.port
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
        )
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status in (health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING)
        with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(pki.ca.read_bytes())) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait(5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cert_file": "x.crt", "key_file": "", "client_ca_file": ""}, "set both AUDIO_TLS_CERT_FILE"),
        ({"cert_file": "", "key_file": "", "client_ca_file": "ca.crt"}, "AUDIO_TLS_CLIENT_CA_FILE needs"),
        ({"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key", "client_ca_file": ""}, "cannot read"),
    ],
)
def test_incomplete_server_tls_settings_are_refused_by_name(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        server_credentials(**kwargs, prefix="AUDIO")


def test_gateway_refuses_to_start_with_a_key_but_no_ca(make_gateway: Callable[..., Flask], pki: Pki) -> None:
    with pytest.raises(GatewayStartupError, match="GRPC_TLS_CA_FILE"):
        make_gateway(GRPC_TLS_CERT_FILE=pki.client.cert, GRPC_TLS_KEY_FILE=pki.client.key)
