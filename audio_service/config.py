"""The audio service's configuration, read from the environment in one place and checked before anything starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mediabot import limits

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A bad environment value, reported by name so the operator knows which variable to fix."""


@dataclass(frozen=True)
class Settings:
    """Everything the service can be tuned with; defaults fit WhatsApp's own limits."""

    # host:port to bind. Loopback by default so a dev machine never exposes it; containers set 0.0.0.0:50051.
    listen: str = "127.0.0.1:50051"
    # WhatsApp refuses media over 16 MiB, so a bigger input is not a voice note.
    max_input_bytes: int = limits.DEFAULT_MAX_MEDIA_BYTES
    # Longest audio accepted, enforced while decoding (a small file can expand to hours). The gateway reads the
    # same variable, with the same default, to size the WAV it receives.
    max_duration_s: float = limits.DEFAULT_MAX_AUDIO_DURATION_S
    # Conversions running at once; each is one ffmpeg process, so more than the CPU count only adds latency.
    workers: int = os.cpu_count() or 1
    # Calls queued beyond the running ones before new ones are refused with RESOURCE_EXHAUSTED.
    max_queued: int = 16
    # SIGTERM: how long in-flight calls get to finish before the server cancels them.
    grace_s: float = 10.0
    # Connections are closed gracefully after about this long, so clients resolve the service name again and
    # spread their calls over new replicas (mediabot.grpc_server); 0 = never.
    max_connection_age_s: float = 300.0
    log_level: str = "INFO"
    # The ffmpeg binary (a name on PATH or a path).
    ffmpeg: str = "ffmpeg"
    # Where the per-call private temp directories are made; None means the system's (TMPDIR).
    tmp_dir: str | None = None
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
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (or ``env``); raise ConfigError naming the variable on any bad value."""
        env = os.environ if env is None else env
        defaults = cls()
        settings = cls(
            listen=_text(env, "AUDIO_LISTEN", defaults.listen),
            max_input_bytes=_int(env, "AUDIO_MAX_INPUT_BYTES", defaults.max_input_bytes, minimum=1),
            max_duration_s=_float(env, "AUDIO_MAX_DURATION_S", defaults.max_duration_s, minimum=1.0),
            workers=_int(env, "AUDIO_WORKERS", defaults.workers, minimum=1),
            max_queued=_int(env, "AUDIO_MAX_QUEUED", defaults.max_queued, minimum=0),
            grace_s=_float(env, "AUDIO_GRACE_S", defaults.grace_s, minimum=0.0),
            max_connection_age_s=_float(env, "AUDIO_MAX_CONNECTION_AGE_S", defaults.max_connection_age_s, minimum=0.0),
            log_level=_text(env, "LOG_LEVEL", defaults.log_level).upper(),
            ffmpeg=_text(env, "AUDIO_FFMPEG", defaults.ffmpeg),
            tmp_dir=env.get("AUDIO_TMP_DIR") or None,
            metrics_port=_int(env, "AUDIO_METRICS_PORT", defaults.metrics_port, minimum=0),
            tls_cert_file=env.get("AUDIO_TLS_CERT_FILE", "").strip(),
            tls_key_file=env.get("AUDIO_TLS_KEY_FILE", "").strip(),
            tls_client_ca_file=env.get("AUDIO_TLS_CLIENT_CA_FILE", "").strip(),
        )
        if settings.metrics_port > 65535:
            raise ConfigError(f"AUDIO_METRICS_PORT must be a TCP port (0 = off), got {settings.metrics_port}")
        if ":" not in settings.listen:
            raise ConfigError(f"AUDIO_LISTEN must be host:port, got {settings.listen!r}")
        if settings.log_level not in _LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {settings.log_level!r}")
        if settings.tmp_dir is not None and not os.path.isdir(settings.tmp_dir):
            raise ConfigError(f"AUDIO_TMP_DIR must be an existing directory, got {settings.tmp_dir!r}")
        return settings


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name} must be a finite number of at least {minimum}, got {raw!r}")
    return value
