"""Reading settings from the environment: the one ConfigError, and one typed helper per kind of value.

Every process's ``config.py`` (gateway, audio_service, vision_service, face_model) builds its frozen Settings
with these, so a wrong value is refused the same way everywhere, at start-up, with one message shape that
names the variable, says what it must be and repeats what it got:

    AUDIO_MAX_DURATION_S must be a number >= 1, got 'abc'

Each helper takes the environment as a mapping (``os.environ`` in production, a dict in tests) and the
variable's name written out, so a reader (and tests/deploy, which greps config.py for quoted names) sees in
a service's config.py the variables that are its own. A variable that is unset, empty or only spaces takes
the default: compose and Kubernetes hand empty strings to optional keys. Values are used without surrounding
spaces. Rules that tie several variables together stay in each service's config.py, raising ConfigError too.

ServerSettings holds what both gRPC services are tuned with (listen address, workers, queue, drain time, metrics
port, TLS files, LOG_LEVEL), read under each service's prefix (AUDIO_LISTEN, VISION_LISTEN, ...) and listed
by ServerSettings.variables(); a service's Settings subclasses it and adds only what is its own.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, overload

Env = Mapping[str, str]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

# host:port as gRPC, Triton and S3 clients take it: a DNS name (compose and k8s service names included), an
# IPv4 address, or an IPv6 address in brackets, then a decimal port.
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?")
_GRPC_TARGET = (
    "a gRPC target: host:port, or a gRPC URI with a port such as dns:///host:port, "
    "ipv4:10.0.0.1:port,10.0.0.2:port, ipv6:[::1]:port or unix:/path/to/socket"
)


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the variable and says what it must be."""


def invalid(name: str, expected: str, value: object, reason: str = "") -> ConfigError:
    """The one message shape, ``NAME must be <expected>, got '<value>'`` (then ``: <reason>`` if given).

    Returned rather than raised, so a caller writes ``raise invalid(...)`` and the traceback points at the check.
    Never pass a secret as ``value``: the message goes to the logs.
    """
    message = f"{name} must be {expected}, got {str(value)!r}"
    return ConfigError(f"{message}: {reason}" if reason else message)


def invalid_secret(name: str, expected: str) -> ConfigError:
    """invalid() for a secret (a token, a key): the same shape, but the value stays out of the message."""
    return ConfigError(f"{name} must be {expected}, got something else (a secret, so not repeated here)")


def optional(env: Env, name: str) -> str | None:
    """The value without surrounding spaces; None when the variable is unset or blank."""
    value = env.get(name)
    if value is None:
        return None
    return value.strip() or None


def text(env: Env, name: str, default: str = "") -> str:
    """Free text (a name, a command, a secret): anything but blank, which means the default."""
    return optional(env, name) or default


@overload
def integer(env: Env, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int: ...
@overload
def integer(
    env: Env, name: str, default: None, *, minimum: int | None = None, maximum: int | None = None
) -> int | None: ...
def integer(env: Env, name: str, default: int | None, *, minimum: int | None = None,
            maximum: int | None = None) -> int | None:
    """A whole number within the inclusive bounds given; ``default`` (None: not set) when unset."""
    raw = optional(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not _within(value, minimum, maximum):
        raise invalid(name, "a whole number" + _bounds(minimum, maximum), raw)
    return value


def number(env: Env, name: str, default: float, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None, unit: str = "") -> float:
    """A finite number within the bounds given: ``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive.

    NaN and infinity are refused: no setting means "forever", and NaN would pass every comparison as false.
    """
    raw = optional(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if (not math.isfinite(value) or not _within(value, minimum, maximum)
            or (above is not None and not value > above) or (below is not None and not value < below)):
        noun = f"a number of {unit}" if unit else "a number"
        raise invalid(name, noun + _bounds(minimum, maximum, above, below), raw)
    return value


def seconds(env: Env, name: str, default: float, *, zero_allowed: bool = False, below: float | None = None) -> float:
    """A duration (timeout, pause, budget) in seconds: greater than 0, or 0 and more with ``zero_allowed``."""
    if zero_allowed:
        return number(env, name, default, minimum=0, below=below, unit="seconds")
    return number(env, name, default, above=0, below=below, unit="seconds")


def seconds_list(env: Env, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated durations in seconds, each 0 or more (e.g. the pauses of a retry schedule)."""
    raw = optional(env, name)
    if raw is None:
        return default
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        values = (math.nan,)
    if not all(math.isfinite(value) and value >= 0 for value in values):
        raise invalid(name, "comma-separated seconds, each 0 or more, like 1,3", raw)
    return values


def flag(env: Env, name: str, default: bool) -> bool:
    """On or off: 1/0, true/false, yes/no, on/off in any case."""
    raw = optional(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise invalid(name, "1 or 0 (or true/false, yes/no, on/off)", raw)


def port(env: Env, name: str, default: int, *, zero_means_off: bool = False) -> int:
    """A TCP port, 1-65535; with ``zero_means_off`` 0 is accepted too (e.g. no metrics server)."""
    raw = optional(env, name)
    if raw is None:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() else -1
    if not (0 if zero_means_off else 1) <= value <= 65535:
        raise invalid(name, "a TCP port (1-65535)" + (", or 0 for none" if zero_means_off else ""), raw)
    return value


def listen_address(env: Env, name: str, default: str) -> str:
    """host:port for a server to bind (``0.0.0.0:50051``, ``[::]:50051``); port 0 lets the system pick one."""
    value = text(env, name, default)
    if _host_port(value, port_required=True, port_zero=True) is None:
        raise invalid(name, "host:port to listen on, like 0.0.0.0:50051 or [::]:50051", value)
    return value


@overload
def address(env: Env, name: str, default: str, *, port_required: bool = True) -> str: ...
@overload
def address(env: Env, name: str, default: None, *, port_required: bool = True) -> str | None: ...
def address(env: Env, name: str, default: str | None, *, port_required: bool = True) -> str | None:
    """host:port of a server to connect to (Triton, S3), without a scheme; the port may be left out only when
    ``port_required`` is False (the client then uses its protocol's own default)."""
    value = optional(env, name)
    if value is None:
        return default
    if _host_port(value, port_required=port_required, port_zero=False) is None:
        shape = "host:port" if port_required else "host or host:port"
        raise invalid(name, f"{shape} without a scheme or path", value)
    return value


def grpc_target(env: Env, name: str, default: str) -> str:
    """What grpc.insecure_channel() is given: host:port, or a gRPC name-resolution URI
    (https://github.com/grpc/grpc/blob/master/doc/naming.md) such as ``dns:///audio-headless:50051``, which
    resolves every address of a headless Service so a round_robin policy can spread calls over them.

    A port is required in every form: gRPC would otherwise quietly dial 443, where our services never listen.
    """
    value = text(env, name, default)
    if not _is_grpc_target(value):
        raise invalid(name, _GRPC_TARGET, value)
    return value


def path(env: Env, name: str, default: Path) -> Path:
    """A file or directory path, not checked here (it may be created later, or lie on another machine)."""
    raw = optional(env, name)
    return default if raw is None else Path(raw)


@overload
def directory(env: Env, name: str, default: Path) -> Path: ...
@overload
def directory(env: Env, name: str, default: None) -> Path | None: ...
def directory(env: Env, name: str, default: Path | None) -> Path | None:
    """A directory that must exist already (the default too, when there is one); None when unset and no default."""
    raw = optional(env, name)
    value = default if raw is None else Path(raw)
    if value is not None and not value.is_dir():
        raise invalid(name, "an existing directory", value)
    return value


def choice(env: Env, name: str, default: str, choices: Sequence[str]) -> str:
    """One of ``choices``, matched in any case and returned as spelled in ``choices``."""
    raw = optional(env, name)
    if raw is None:
        return default
    for candidate in choices:
        if raw.lower() == candidate.lower():
            return candidate
    raise invalid(name, "one of " + ", ".join(choices), raw)


def log_level(env: Env, name: str, default: str = "INFO") -> str:
    """A standard logging level name (the JSON logs of mediabot.logs), returned in upper case."""
    return choice(env, name, default, LOG_LEVELS)


def _within(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _bounds(minimum: float | None = None, maximum: float | None = None, above: float | None = None,
            below: float | None = None) -> str:
    """' between 1 and 5', ' >= 1', ' > 0 and < 15', or '' without bounds: the tail of an expectation."""
    if minimum is not None and maximum is not None and above is None and below is None:
        return f" between {_plain(minimum)} and {_plain(maximum)}"
    limits = [f"{sign} {_plain(limit)}" for sign, limit in ((">=", minimum), (">", above), ("<=", maximum),
                                                            ("<", below)) if limit is not None]
    return " " + " and ".join(limits) if limits else ""


def _plain(limit: float) -> str:
    """1.0 as 1, 0.01 as 0.01: bounds are written as an operator would type them."""
    return str(int(limit)) if float(limit).is_integer() else str(limit)


def _host_port(value: str, *, port_required: bool, port_zero: bool) -> tuple[str, int | None] | None:
    """(host, port) when ``value`` is host[:port] as described at _HOST_PORT, else None."""
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        return None
    host, port_text = match["host"], match["port"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    if port_text is None:
        return None if port_required else (host, None)
    number = int(port_text)
    if not (0 if port_zero else 1) <= number <= 65535:
        return None
    return host, number


def _is_grpc_target(value: str) -> bool:
    """gRPC's own URI schemes first (as gRPC does: ``unix:50051`` is a socket path), then plain host:port."""
    scheme, _, rest = value.partition(":")
    if scheme == "dns":
        # dns:[//authority/]host:port; the authority (a DNS server to ask) may be empty, as in dns:///name:port.
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash or (authority and _host_port(authority, port_required=False, port_zero=False) is None):
                return False
        return _host_port(rest, port_required=True, port_zero=False) is not None
    if scheme in ("ipv4", "ipv6"):
        return bool(rest) and all(_is_ip_with_port(item, scheme) for item in rest.split(","))
    if scheme in ("unix", "unix-abstract"):
        return bool(rest.strip("/"))
    return _host_port(value, port_required=True, port_zero=False) is not None


def _is_ip_with_port(item: str, scheme: str) -> bool:
    """One address of an ipv4: or ipv6: target: 10.0.0.1:50051, or [::1]:50051 for IPv6."""
    parsed = _host_port(item, port_required=True, port_zero=False)
    if parsed is None:
        return False
    host = parsed[0]
    if scheme == "ipv6":
        return host.startswith("[")  # _host_port has checked the address inside the brackets
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ServerSettings:
    """What every gRPC service is tuned with. A subclass names its ``ENV_PREFIX`` and may give other defaults
    (each service listens on its own port); its from_env adds ``**cls.server_fields(env)`` to its own fields."""

    # The services' variables are ENV_PREFIX + "_LISTEN" and so on (see variables()).
    ENV_PREFIX: ClassVar[str] = ""

    # host:port to bind: loopback by default so a dev machine never exposes it; containers set 0.0.0.0:port.
    # Port 0 picks a free one, as the tests do.
    listen: str = "127.0.0.1:0"
    # Calls served at once.
    workers: int = 1
    # Calls queued beyond the running ones before new ones are refused with RESOURCE_EXHAUSTED.
    max_queued: int = 16
    # SIGTERM: how long in-flight calls get to finish before the server cancels them.
    grace_s: float = 10.0
    # Connections are closed gracefully after about this long, so clients resolve the service name again and
    # spread their calls over new replicas (mediabot.grpc_server); 0 = never.
    max_connection_age_s: float = 300.0
    log_level: str = "INFO"
    # Prometheus /metrics on this port (same host as ``listen``); 0 = no metrics server.
    metrics_port: int = 0
    # TLS on the gRPC port (see mediabot.grpc_tls): PEM paths; "" = plaintext. A client CA turns on mTLS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""

    @property
    def max_concurrent_rpcs(self) -> int:
        return self.workers + self.max_queued

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """Every variable server_fields() reads, for tests/deploy to match against compose and k8s."""
        suffixes = ("LISTEN", "WORKERS", "MAX_QUEUED", "GRACE_S", "MAX_CONNECTION_AGE_S", "METRICS_PORT",
                    "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE")
        return (*(f"{cls.ENV_PREFIX}_{suffix}" for suffix in suffixes), "LOG_LEVEL")

    @classmethod
    def server_fields(cls, env: Env) -> dict[str, Any]:
        """The shared fields from ``env``, with this class's defaults for those unset."""
        prefix, defaults = cls.ENV_PREFIX, cls()
        return {
            "listen": listen_address(env, f"{prefix}_LISTEN", defaults.listen),
            "workers": integer(env, f"{prefix}_WORKERS", defaults.workers, minimum=1),
            "max_queued": integer(env, f"{prefix}_MAX_QUEUED", defaults.max_queued, minimum=0),
            "grace_s": seconds(env, f"{prefix}_GRACE_S", defaults.grace_s, zero_allowed=True),
            "max_connection_age_s": seconds(
                env, f"{prefix}_MAX_CONNECTION_AGE_S", defaults.max_connection_age_s, zero_allowed=True
            ),
            "log_level": log_level(env, "LOG_LEVEL", defaults.log_level),
            "metrics_port": port(env, f"{prefix}_METRICS_PORT", defaults.metrics_port, zero_means_off=True),
            "tls_cert_file": text(env, f"{prefix}_TLS_CERT_FILE"),
            "tls_key_file": text(env, f"{prefix}_TLS_KEY_FILE"),
            "tls_client_ca_file": text(env, f"{prefix}_TLS_CLIENT_CA_FILE"),
        }
