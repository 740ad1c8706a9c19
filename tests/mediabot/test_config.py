"""mediabot.config: each helper's default, accepted forms and refusals, all in the one message shape; and every
gRPC target form it accepts dialled for real against a gRPC server on loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mediabot import config
from mediabot.config import ConfigError


def refused(call, name: str, value: str, expected: str) -> None:  # noqa: ANN001
    """``call`` raises ConfigError reading ``{name: value}``, worded exactly as the one shape says."""
    with pytest.raises(ConfigError) as raised:
        call({name: value})
    assert str(raised.value) == f"{name} must be {expected}, got {value!r}"


def test_the_one_message_shape() -> None:
    error = config.invalid("AUDIO_MAX_DURATION_S", "a number between 1 and 3600", "abc")
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert str(error) == "AUDIO_MAX_DURATION_S must be a number between 1 and 3600, got 'abc'"
    assert str(config.invalid("X_FILE", "a PEM file", Path("/x.pem"), "no -----BEGIN line in it")) == (
        "X_FILE must be a PEM file, got '/x.pem': no -----BEGIN line in it"
    )


def test_a_secret_is_never_repeated() -> None:
    message = str(config.invalid_secret("BOT_TOKEN", "a token like 1:AA..."))
    assert message.startswith("BOT_TOKEN must be a token like 1:AA..., got ")


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_unset_or_blank_takes_the_default(blank: str | None) -> None:
    env = {} if blank is None else {"X": blank}
    assert config.optional(env, "X") is None
    assert config.text(env, "X", "dflt") == "dflt"
    assert config.integer(env, "X", 7, minimum=1) == 7
    assert config.integer(env, "X", None) is None
    assert config.number(env, "X", 1.5, minimum=1) == 1.5
    assert config.seconds(env, "X", 2.0) == 2.0
    assert config.seconds_list(env, "X", (1.0, 3.0)) == (1.0, 3.0)
    assert config.flag(env, "X", True) is True
    assert config.port(env, "X", 8080) == 8080
    assert config.listen_address(env, "X", "127.0.0.1:0") == "127.0.0.1:0"
    assert config.address(env, "X", None) is None
    assert config.grpc_target(env, "X", "audio:50051") == "audio:50051"
    assert config.path(env, "X", Path("data")) == Path("data")
    assert config.directory(env, "X", None) is None
    assert config.choice(env, "X", "a", ("a", "b")) == "a"
    assert config.log_level(env, "X") == "INFO"


def test_values_are_stripped() -> None:
    assert config.text({"X": "  ffmpeg \n"}, "X") == "ffmpeg"
    assert config.integer({"X": " 42 "}, "X", 0) == 42


def test_integer() -> None:
    assert config.integer({"N": "5"}, "N", 0, minimum=1, maximum=5) == 5
    assert config.integer({"N": "-3"}, "N", 0) == -3
    refused(lambda env: config.integer(env, "N", 1), "N", "1.5", "a whole number")
    refused(lambda env: config.integer(env, "N", 1, minimum=1), "N", "0", "a whole number >= 1")
    refused(lambda env: config.integer(env, "N", 1, minimum=1, maximum=5), "N", "6", "a whole number between 1 and 5")
    refused(lambda env: config.integer(env, "N", 1, maximum=5), "N", "16MB", "a whole number <= 5")


def test_number() -> None:
    assert config.number({"F": "2.5"}, "F", 0.0, minimum=1) == 2.5
    assert config.number({"F": "1"}, "F", 0.0, minimum=1, maximum=1) == 1.0
    refused(lambda env: config.number(env, "F", 1.0, minimum=1, maximum=3600), "F", "abc",
            "a number between 1 and 3600")
    refused(lambda env: config.number(env, "F", 0.5, minimum=0, maximum=1), "F", "1.01", "a number between 0 and 1")
    refused(lambda env: config.number(env, "F", 1.0, minimum=0.01), "F", "0.001", "a number >= 0.01")
    refused(lambda env: config.number(env, "F", 1.0, above=0, below=15), "F", "15", "a number > 0 and < 15")
    # NaN compares false with everything and infinity means "never": neither is a setting.
    for value in ("nan", "inf", "-inf"):
        refused(lambda env: config.number(env, "F", 1.0), "F", value, "a number")


def test_seconds() -> None:
    assert config.seconds({"T": "0.25"}, "T", 1.0) == 0.25
    assert config.seconds({"T": "0"}, "T", 1.0, zero_allowed=True) == 0.0
    refused(lambda env: config.seconds(env, "T", 1.0), "T", "0", "a number of seconds > 0")
    refused(lambda env: config.seconds(env, "T", 1.0, zero_allowed=True), "T", "-1", "a number of seconds >= 0")
    refused(lambda env: config.seconds(env, "T", 1.0, below=15), "T", "20", "a number of seconds > 0 and < 15")
    refused(lambda env: config.seconds(env, "T", 1.0), "T", "soon", "a number of seconds > 0")


def test_seconds_list() -> None:
    assert config.seconds_list({"D": "0.5, 1,2"}, "D", ()) == (0.5, 1.0, 2.0)
    assert config.seconds_list({"D": "0"}, "D", (1.0,)) == (0.0,)
    for value in ("1,soon", "1,-3", "1,inf"):
        refused(lambda env: config.seconds_list(env, "D", ()), "D", value,
                "comma-separated seconds, each 0 or more, like 1,3")


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                                 ("0", False), ("false", False), ("No", False), ("off", False)])
def test_flag(value: str, expected: bool) -> None:
    assert config.flag({"B": value}, "B", not expected) is expected


def test_flag_refuses_anything_else() -> None:
    refused(lambda env: config.flag(env, "B", False), "B", "maybe", "1 or 0 (or true/false, yes/no, on/off)")


def test_port() -> None:
    assert config.port({"P": "65535"}, "P", 1) == 65535
    assert config.port({"P": "0"}, "P", 1, zero_means_off=True) == 0
    for value in ("0", "65536", "-1", "http", "80.0"):
        refused(lambda env: config.port(env, "P", 1), "P", value, "a TCP port (1-65535)")
    refused(lambda env: config.port(env, "P", 0, zero_means_off=True), "P", "70000",
            "a TCP port (1-65535), or 0 for none")


@pytest.mark.parametrize("value", ["0.0.0.0:50051", "127.0.0.1:0", "[::]:50051", "[::1]:0", "localhost:50051",
                                   "audio-svc.default.svc:50051"])
def test_listen_address_accepts(value: str) -> None:
    assert config.listen_address({"L": value}, "L", "x") == value


@pytest.mark.parametrize("value", ["50051", "0.0.0.0", "0.0.0.0:", "::1:50051", "[zz::1]:50051", "0.0.0.0:65536",
                                   "http://0.0.0.0:50051", "0.0.0.0:50051/x", "unix:/tmp/audio.sock", "a b:1"])
def test_listen_address_refuses(value: str) -> None:
    refused(lambda env: config.listen_address(env, "L", "x"), "L", value,
            "host:port to listen on, like 0.0.0.0:50051 or [::]:50051")


def test_address() -> None:
    assert config.address({"A": "triton:8001"}, "A", "x") == "triton:8001"
    assert config.address({"A": "minio"}, "A", None, port_required=False) == "minio"
    assert config.address({"A": "[::1]:9000"}, "A", None, port_required=False) == "[::1]:9000"
    for value in ("triton", "triton:0", "grpc://triton:8001", "triton:8001/v2"):
        refused(lambda env: config.address(env, "A", "x"), "A", value, "host:port without a scheme or path")
    for value in ("http://minio:9000", "minio:9000/bucket", "minio:port"):
        refused(lambda env: config.address(env, "A", None, port_required=False), "A", value,
                "host or host:port without a scheme or path")


GRPC_TARGETS = [
    "audio:50051", "10.0.0.7:50051", "[::1]:50051", "dns:///audio-headless.mediabot.svc.cluster.local:50051",
    "dns:audio:50051", "dns://10.96.0.10:53/audio:50051", "dns://dns-server/audio:50051",
    "ipv4:10.0.0.7:50051", "ipv4:10.0.0.7:50051,10.0.0.8:50051", "ipv6:[::1]:50051,[fe80::1]:50051",
    "unix:/run/mediabot/audio.sock", "unix:///run/mediabot/audio.sock", "unix-abstract:mediabot-audio",
]


@pytest.mark.parametrize("target", GRPC_TARGETS)
def test_grpc_target_accepts(target: str) -> None:
    assert config.grpc_target({"G": target}, "G", "x") == target


@pytest.mark.parametrize("target", [
    "audio", "audio:", "audio:0", "audio:65536", "http://audio:50051", "grpc://audio:50051", "audio:50051/x",
    "dns:///audio", "dns://audio:50051", "dns:///", "ipv4:audio:50051", "ipv4:10.0.0.7", "ipv4:10.0.0.7:50051,",
    "ipv6:::1", "ipv6:10.0.0.7:50051", "unix:", "unix:///", ":50051",
])
def test_grpc_target_refuses(target: str) -> None:
    with pytest.raises(ConfigError, match=rf"^G must be a gRPC target: .*, got '{re.escape(target)}'$"):
        config.grpc_target({"G": target}, "G", "x")


@pytest.fixture(scope="module")
def health_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real gRPC server with the health service on a loopback TCP port, [::1] and a unix socket."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    socket_path = tmp_path_factory.mktemp("grpc") / "health.sock"
    assert server.add_insecure_port(f"unix:{socket_path}")
    v6_port = server.add_insecure_port("[::1]:0")
    server.start()
    try:
        yield {"port": str(port), "socket": str(socket_path), "v6_port": str(v6_port)}
    finally:
        server.stop(0).wait(5)


@pytest.mark.parametrize("form", [
    "127.0.0.1:{port}", "localhost:{port}", "dns:///localhost:{port}", "dns:127.0.0.1:{port}",
    "ipv4:127.0.0.1:{port}", "ipv4:127.0.0.1:{port},127.0.0.1:{port}", "unix:{socket}", "unix://{socket}",
    "[::1]:{v6_port}", "ipv6:[::1]:{v6_port}",
])
def test_every_accepted_form_is_one_grpc_dials(health_server: dict[str, str], form: str) -> None:
    """What grpc_target lets through is what grpc.insecure_channel() reaches: a health check answers over it."""
    if "v6_port" in form and health_server["v6_port"] == "0":
        pytest.fail("this machine has no IPv6 loopback: the [::1] forms cannot be checked here")
    target = config.grpc_target({"G": form.format(**health_server)}, "G", "x")
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_path_and_directory(tmp_path: Path) -> None:
    assert config.path({"P": "spool/"}, "P", Path("x")) == Path("spool")
    assert config.directory({"D": str(tmp_path)}, "D", None) == tmp_path
    assert config.directory({}, "D", tmp_path) == tmp_path
    refused(lambda env: config.directory(env, "D", None), "D", str(tmp_path / "missing"), "an existing directory")
    (tmp_path / "file").write_text("x")
    refused(lambda env: config.directory(env, "D", None), "D", str(tmp_path / "file"), "an existing directory")
    with pytest.raises(ConfigError, match="^D must be an existing directory, got '/no/such/default'$"):
        config.directory({}, "D", Path("/no/such/default"))


def test_choice_and_log_level() -> None:
    assert config.choice({"S": "MinIO"}, "S", "filesystem", ("filesystem", "minio")) == "minio"
    refused(lambda env: config.choice(env, "S", "filesystem", ("filesystem", "minio")), "S", "s3",
            "one of filesystem, minio")
    assert config.log_level({"LOG_LEVEL": "debug"}, "LOG_LEVEL") == "DEBUG"
    assert config.log_level({}, "LOG_LEVEL", "WARNING") == "WARNING"
    refused(lambda env: config.log_level(env, "LOG_LEVEL"), "LOG_LEVEL", "LOUD",
            "one of DEBUG, INFO, WARNING, ERROR, CRITICAL")


class Asked(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.append(key)
        return super().get(key, default)


@dataclass(frozen=True)
class EchoSettings(config.ServerSettings):
    ENV_PREFIX: ClassVar[str] = "ECHO"

    listen: str = "127.0.0.1:50099"
    workers: int = 3


def test_server_settings_read_under_the_services_prefix_with_its_defaults() -> None:
    assert EchoSettings(**EchoSettings.server_fields({})) == EchoSettings()
    fields = EchoSettings.server_fields({
        "ECHO_LISTEN": "[::]:0", "ECHO_WORKERS": "8", "ECHO_MAX_QUEUED": "0", "ECHO_GRACE_S": "0", "LOG_LEVEL": "error",
        "ECHO_METRICS_PORT": "9100", "ECHO_TLS_CERT_FILE": "c.pem", "ECHO_TLS_KEY_FILE": "k.pem",
        "ECHO_TLS_CLIENT_CA_FILE": "ca.pem",
    })
    assert EchoSettings(**fields) == EchoSettings(
        listen="[::]:0", workers=8, max_queued=0, grace_s=0.0, log_level="ERROR", metrics_port=9100,
        tls_cert_file="c.pem", tls_key_file="k.pem", tls_client_ca_file="ca.pem",
    )
    assert EchoSettings(**fields).max_concurrent_rpcs == 8
    refused(EchoSettings.server_fields, "ECHO_WORKERS", "0", "a whole number >= 1")


def test_server_settings_list_exactly_the_variables_they_read() -> None:
    """tests/deploy trusts variables() to say what compose and k8s may set for a service."""
    env = Asked()
    EchoSettings.server_fields(env)
    assert sorted(env.asked) == sorted(EchoSettings.variables())


def test_there_is_one_config_error_in_the_tree() -> None:
    """Every process's settings and mediabot.grpc_tls raise this one class, so one `except` catches them all."""
    root = Path(__file__).resolve().parents[2]
    folders = ("gateway", "audio_service", "vision_service", "face_model", "mediabot", "bench", "tests")
    sources = [p for folder in folders for p in (root / folder).rglob("*.py")]
    defining = [p.relative_to(root).as_posix() for p in sources
                if re.search(r"^class \w*ConfigError\b", p.read_text(encoding="utf-8"), re.M)]
    assert defining == ["mediabot/config.py"]
