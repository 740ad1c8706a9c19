"""Everything the vision service can be told, read from the environment in one place at start-up.

A bad value stops the service before it binds a port, with a message naming the variable, rather than
surfacing later as a confusing error on the first photo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mediabot import limits

MIB = 1024 * 1024
# Tiles below 450 px would show the photo barely larger than the whole 300 px view; above 1000 a square photo
# needs more than 31 tiles (the model's max_batch_size is 32, one is the whole view) and the CPU cost grows
# with the square of the long side.
MIN_TILE_LONG_SIDE = 450
MAX_TILE_LONG_SIDE = 1000


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    # Where the gRPC server listens ("host:port"; port 0 picks a free one, as the tests do).
    listen: str = "127.0.0.1:50052"
    # Triton's gRPC endpoint (not its HTTP one: tritonclient.grpc ships the tensors as raw bytes).
    triton_url: str = "127.0.0.1:8001"
    triton_model: str = "face_detector"
    # "" lets Triton pick the latest loaded version; the response says which one decided.
    triton_model_version: str = ""
    # Longest a call may take (decode + Triton) when the caller sets no shorter gRPC deadline.
    triton_timeout_s: float = 10.0
    # Decision thresholds per view kind (vision_service/views.py), from bench/accuracy.py on the photo set
    # (README, "Accuracy"): each is the middle of the range that gives the same precision and recall with the
    # others held — whole view 0.80-0.99, tiles 0.59-0.93, sideways 0.85-0.99. ``face_min_confidence`` is the
    # whole photo's; tiles of the enlarged photo and the photo turned 90°/270° (looked at only when nothing
    # upright was found) have their own.
    face_min_confidence: float = 0.9
    face_tile_min_confidence: float = 0.76
    face_sideways_min_confidence: float = 0.92
    # Tiles show the photo scaled to this long side (px), cut into canvas-sized overlapping tiles, for faces too
    # small for the whole view; 0 = whole view only (1/10 of the CPU on a large photo, small faces lost).
    face_tile_long_side: int = 900
    # Look at the photo turned 90° and 270° when the upright views find nothing (phone photos without EXIF).
    face_sideways: bool = True
    # WhatsApp's own media cap; larger requests are refused before decoding.
    max_input_bytes: int = limits.DEFAULT_MAX_MEDIA_BYTES
    # Pixel cap applied from the image header, before any pixel is decoded (decompression bombs).
    # 50 MP admits every phone photo (a 50 MP sensor is 8160x6120 = 49.9 MP; WhatsApp itself sends at most
    # 4096 px on the long side) while bounding a non-JPEG decode to ~200 MB per worker (RGBA, 4 bytes/pixel).
    max_pixels: int = 50_000_000
    # Memory (MiB) all photos decoding at once may take (vision_service.decode.DecodeMemory). JPEG decodes
    # scaled down and takes a few MB; PNG, GIF, BMP and WebP decode at full size first (4 bytes per RGBA
    # pixel, 16 for WebP's decoder). A photo needing more alone is refused as too large; one that finds the
    # room taken waits up to its deadline, then is refused as UNAVAILABLE, which the gateway retries.
    # 200 MiB admits a 50 MP RGBA PNG or a 13 MP WebP and keeps the service under 400 MB.
    decode_memory_mb: int = 200
    # Threads serving DetectFaces; also how many Triton requests can be in flight for dynamic batching. Each
    # call holds its photo at up to 900 px and 9-13 canvases (~5-15 MB), and already brings Triton a batch:
    # 4 kept the service under 200 MB at concurrency 16 (peak 195 MB vs 253 MB with 8) with more throughput
    # (bench/vision.py, README "Performance").
    workers: int = 4
    # Calls queued beyond the running ones before new ones are refused with RESOURCE_EXHAUSTED.
    max_queued: int = 32
    # Seconds SIGTERM leaves in-flight calls to finish.
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
    def decode_memory_bytes(self) -> int:
        return self.decode_memory_mb * MIB

    @property
    def max_concurrent_rpcs(self) -> int:
        return self.workers + self.max_queued

    @property
    def max_message_bytes(self) -> int:
        """The largest DetectFaces request gRPC will accept: the image cap plus room for the other fields."""
        return limits.max_request_bytes(self.max_input_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (or ``environ``); raise ConfigError naming the variable on any bad value."""
        env = os.environ if environ is None else environ
        defaults = cls()
        settings = cls(
            listen=_address(env, "VISION_LISTEN", defaults.listen),
            triton_url=_address(env, "TRITON_URL", defaults.triton_url),
            triton_model=_nonempty(env, "TRITON_MODEL", defaults.triton_model),
            triton_model_version=_version(env, "TRITON_MODEL_VERSION", defaults.triton_model_version),
            triton_timeout_s=_number(env, "TRITON_TIMEOUT_S", defaults.triton_timeout_s, float, minimum=0.01),
            face_min_confidence=_confidence(env, "FACE_MIN_CONFIDENCE", defaults.face_min_confidence),
            face_tile_min_confidence=_confidence(env, "FACE_TILE_MIN_CONFIDENCE", defaults.face_tile_min_confidence),
            face_sideways_min_confidence=_confidence(
                env, "FACE_SIDEWAYS_MIN_CONFIDENCE", defaults.face_sideways_min_confidence
            ),
            face_tile_long_side=_number(env, "FACE_TILE_LONG_SIDE", defaults.face_tile_long_side, int, minimum=0),
            face_sideways=_flag(env, "FACE_SIDEWAYS", defaults.face_sideways),
            max_input_bytes=_number(env, "VISION_MAX_INPUT_BYTES", defaults.max_input_bytes, int, minimum=1),
            max_pixels=_number(env, "VISION_MAX_PIXELS", defaults.max_pixels, int, minimum=1),
            decode_memory_mb=_number(env, "VISION_DECODE_MEMORY_MB", defaults.decode_memory_mb, int, minimum=1),
            workers=_number(env, "VISION_WORKERS", defaults.workers, int, minimum=1),
            max_queued=_number(env, "VISION_MAX_QUEUED", defaults.max_queued, int, minimum=0),
            grace_s=_number(env, "VISION_GRACE_S", defaults.grace_s, float, minimum=0.0),
            max_connection_age_s=_number(
                env, "VISION_MAX_CONNECTION_AGE_S", defaults.max_connection_age_s, float, minimum=0.0
            ),
            log_level=_log_level(env, "LOG_LEVEL", defaults.log_level),
            metrics_port=_number(env, "VISION_METRICS_PORT", defaults.metrics_port, int, minimum=0),
            tls_cert_file=_raw(env, "VISION_TLS_CERT_FILE") or "",
            tls_key_file=_raw(env, "VISION_TLS_KEY_FILE") or "",
            tls_client_ca_file=_raw(env, "VISION_TLS_CLIENT_CA_FILE") or "",
        )
        if 0 < settings.face_tile_long_side < MIN_TILE_LONG_SIDE or settings.face_tile_long_side > MAX_TILE_LONG_SIDE:
            raise ConfigError(
                f"FACE_TILE_LONG_SIDE={settings.face_tile_long_side}: expected 0 (no tiles) or "
                f"{MIN_TILE_LONG_SIDE}..{MAX_TILE_LONG_SIDE} px"
            )
        if settings.metrics_port > 65535:
            raise ConfigError(f"VISION_METRICS_PORT={settings.metrics_port}: expected a TCP port (0 = off)")
        return settings


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _nonempty(env: Mapping[str, str], name: str, default: str) -> str:
    return _raw(env, name) or default


def _address(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}={value!r}: expected host:port, e.g. {default!r}")
    return value


def _version(env: Mapping[str, str], name: str, default: str) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    if not value.isdigit():
        raise ConfigError(f"{name}={value!r}: expected a model version number, or empty for the latest")
    return value


def _number(env: Mapping[str, str], name: str, default, kind, *, minimum):
    value = _raw(env, name)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if not number >= minimum or number == float("inf"):  # also refuses NaN
        raise ConfigError(f"{name}={value!r}: must be at least {minimum}")
    return number


def _confidence(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default, float, minimum=0.0)
    if value > 1.0:
        raise ConfigError(f"{name}={value!r}: a confidence is between 0 and 1")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false")


def _log_level(env: Mapping[str, str], name: str, default: str) -> str:
    value = (_raw(env, name) or default).upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"{name}={value!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value
