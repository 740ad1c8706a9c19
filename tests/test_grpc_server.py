"""mediabot.grpc_server, the skeleton both services run on: drain order, the catch-all, connection age, and
start-up errors as one log line with exit status 2 (``python -m audio_service`` and ``python -m vision_service``).

The skeleton is exercised with a small servicer of the test's own (its failures are the test's to choose),
and both services are started as real processes for the start-up errors.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mediabot.grpc_metrics import HANDLED
from mediabot.config import ServerSettings
from mediabot.grpc_server import BindError, GrpcServer, ServerConfig, build_server

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE = "mediabot.test.Skeleton"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class SkeletonSettings(ServerSettings):
    ENV_PREFIX: ClassVar[str] = "SKELETON"


def config(**overrides: object) -> ServerConfig:
    """A test service's configuration: ``overrides`` are ServerSettings fields (listen, workers, ...)."""
    fields: dict[str, object] = {"workers": 2, "max_queued": 2, "max_connection_age_s": 0.0, "grace_s": 5.0}
    settings = SkeletonSettings(**{**fields, **overrides})  # type: ignore[arg-type]
    return ServerConfig(name="skeleton", service_name=SERVICE, settings=settings,
                        max_receive_bytes=1024 * 1024, max_send_bytes=1024 * 1024)


class Skeleton:
    """Methods that fail on purpose, and one that waits until the test lets it answer."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def crash(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise KeyError("a bug in the servicer")

    def refuse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused on purpose")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.entered.set()
        self.release.wait(10)
        return b"done"


def start(skeleton: Skeleton, **overrides: object) -> GrpcServer:
    built = build_server(config(**overrides))
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(skeleton, name))
                for name in ("crash", "refuse", "slow")}
    built.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    built.set_serving(True)
    built.start()
    return built


@pytest.fixture
def skeleton() -> Iterator[tuple[Skeleton, GrpcServer]]:
    servicer = Skeleton()
    built = start(servicer)
    try:
        yield servicer, built
    finally:
        servicer.release.set()
        built.stop(0).wait(5)


def call(port: int, method: str, timeout: float = 10) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return channel.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=timeout)


def test_an_unexpected_exception_is_internal_and_logged_with_its_traceback(
    skeleton: tuple[Skeleton, GrpcServer], caplog: pytest.LogCaptureFixture
) -> None:
    _, built = skeleton
    before = HANDLED.labels(SERVICE, "crash", "INTERNAL")._value.get()
    with caplog.at_level(logging.ERROR, logger="mediabot.grpc_server"), pytest.raises(grpc.RpcError) as raised:
        call(built.port, "crash")
    assert raised.value.code() is grpc.StatusCode.INTERNAL  # not gRPC's bare UNKNOWN
    assert raised.value.details() == "The skeleton service failed unexpectedly."  # no internals to the caller
    (record,) = [r for r in caplog.records if r.getMessage() == "unexpected error in a call"]
    assert record.method == f"/{SERVICE}/crash" and record.exc_info[0] is KeyError
    assert HANDLED.labels(SERVICE, "crash", "INTERNAL")._value.get() == before + 1  # counted as answered


def test_a_status_the_servicer_chose_passes_through(
    skeleton: tuple[Skeleton, GrpcServer], caplog: pytest.LogCaptureFixture
) -> None:
    _, built = skeleton
    with caplog.at_level(logging.ERROR, logger="mediabot.grpc_server"), pytest.raises(grpc.RpcError) as raised:
        call(built.port, "refuse")
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "refused on purpose")
    assert not caplog.records


def test_stop_says_not_serving_first_then_lets_the_call_in_flight_finish() -> None:
    servicer = Skeleton()
    built = start(servicer)
    hooks: list[str] = []
    built.after_stop(lambda: hooks.append("after stop"))
    with grpc.insecure_channel(f"127.0.0.1:{built.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        in_flight = channel.unary_unary(f"/{SERVICE}/slow").future(b"", timeout=30)
        assert servicer.entered.wait(10)

        done = built.stop(grace=10)
        assert next(watch).status == NOT_SERVING  # load balancers and probes hear it first
        built.set_serving(True)  # a health watcher racing the stop cannot take it back
        assert built.health.Check(health_pb2.HealthCheckRequest(), None).status == NOT_SERVING
        assert not done.is_set() and hooks == []  # the call is still running

        servicer.release.set()
        assert in_flight.result() == b"done"  # finished inside the grace period
    assert done.wait(10) and hooks == ["after stop"]  # the hooks ran once the call was done


def test_connections_are_closed_after_their_age_so_clients_resolve_again() -> None:
    """With *_MAX_CONNECTION_AGE_S the server sends GOAWAY; the channel goes back to IDLE (and resolves the
    name again on its next call) instead of keeping one connection for its whole life."""
    built = start(Skeleton(), max_connection_age_s=0.5, grace_s=0.5)
    states: list[grpc.ChannelConnectivity] = []
    seen_idle = threading.Event()

    def record(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state is grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            seen_idle.set()

    try:
        with grpc.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            channel.subscribe(record, try_to_connect=True)
            assert seen_idle.wait(10), states
            channel.unsubscribe(record)
    finally:
        built.stop(0).wait(5)


def test_connection_age_zero_sets_no_age() -> None:
    assert not any(name.startswith("grpc.max_connection_age") for name, _ in config().grpc_options())
    assert dict(config(max_connection_age_s=300, grace_s=10).grpc_options())["grpc.max_connection_age_ms"] == 300_000


def test_an_address_in_use_is_a_bind_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(BindError, match="cannot listen on"):
            build_server(config(listen=f"127.0.0.1:{taken.getsockname()[1]}"))


# -- start-up errors of the real services ------------------------------------------------------------------


def run_service(package: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", package], cwd=REPO_ROOT, env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def only_line(result: subprocess.CompletedProcess[str], *, grpc_core_says: str = "") -> dict[str, object]:
    """The one log line a refused start-up writes: exit status 2, no traceback anywhere. Nothing on stderr
    but what gRPC's C core logs there itself, when ``grpc_core_says`` it."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(grpc_core_says and grpc_core_says in line for line in result.stderr.splitlines()), result.stderr
    (line,) = result.stdout.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["msg"]) == ("ERROR", "bad configuration")
    return entry


@pytest.mark.parametrize("package, prefix", [("audio_service", "AUDIO"), ("vision_service", "VISION")])
def test_a_certificate_that_cannot_be_read_stops_the_service_with_one_line(
    package: str, prefix: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    entry = only_line(run_service(package, {
        f"{prefix}_LISTEN": "127.0.0.1:0", f"{prefix}_TLS_CERT_FILE": missing, f"{prefix}_TLS_KEY_FILE": missing,
    }))
    assert f"{prefix}_TLS_KEY_FILE must be a readable PEM file" in str(entry["error"]) and missing in str(entry["error"])


@pytest.mark.parametrize("package, prefix", [("audio_service", "AUDIO"), ("vision_service", "VISION")])
def test_a_bad_setting_stops_the_service_with_one_line(package: str, prefix: str) -> None:
    entry = only_line(run_service(package, {f"{prefix}_MAX_CONNECTION_AGE_S": "soon"}))
    assert f"{prefix}_MAX_CONNECTION_AGE_S" in str(entry["error"])


@pytest.mark.parametrize("package, prefix", [("audio_service", "AUDIO"), ("vision_service", "VISION")])
def test_an_address_in_use_stops_the_service_with_one_line(package: str, prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        entry = only_line(run_service(package, {f"{prefix}_LISTEN": address}), grpc_core_says="Address already in use")
    assert f"cannot listen on {address}" in str(entry["error"])
