"""Everything the vision service can be told, read from the environment in one place at start-up.

A bad value stops the service before it binds a port, with a message naming the variable, rather than
surfacing later as a confusing error on the first photo.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from mediabot import config, limits

MIB = 1024 * 1024
# Tiles below 450 px would show the photo barely larger than the whole 300 px view; above 1000 a square photo
# needs more than 31 tiles (the model's max_batch_size is 32, one is the whole view) and the CPU cost grows
# with the square of the long side.
MIN_TILE_LONG_SIDE = 450
MAX_TILE_LONG_SIDE = 1000


@dataclass(frozen=True)
class Settings(config.ServerSettings):
    ENV_PREFIX: ClassVar[str] = "VISION"

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
    max_queued: int = 32

    @property
    def decode_memory_bytes(self) -> int:
        return self.decode_memory_mb * MIB

    @property
    def max_message_bytes(self) -> int:
        """The largest DetectFaces request gRPC will accept: the image cap plus room for the other fields."""
        return limits.max_request_bytes(self.max_input_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (or ``environ``); raise ConfigError naming the variable on any bad value."""
        env = os.environ if environ is None else environ
        defaults = cls()
        version = config.text(env, "TRITON_MODEL_VERSION", defaults.triton_model_version)
        if version and not (version.isascii() and version.isdigit()):
            raise config.invalid("TRITON_MODEL_VERSION", "a model version number, or empty for the latest", version)
        tile_long_side = config.integer(env, "FACE_TILE_LONG_SIDE", defaults.face_tile_long_side, minimum=0)
        if 0 < tile_long_side < MIN_TILE_LONG_SIDE or tile_long_side > MAX_TILE_LONG_SIDE:
            raise config.invalid(
                "FACE_TILE_LONG_SIDE", f"0 (no tiles) or between {MIN_TILE_LONG_SIDE} and {MAX_TILE_LONG_SIDE} px",
                tile_long_side,
            )
        return cls(
            **cls.server_fields(env),
            triton_url=config.address(env, "TRITON_URL", defaults.triton_url),
            triton_model=config.text(env, "TRITON_MODEL", defaults.triton_model),
            triton_model_version=version,
            triton_timeout_s=config.number(env, "TRITON_TIMEOUT_S", defaults.triton_timeout_s, minimum=0.01,
                                           unit="seconds"),
            # Detector scores are probabilities, so each threshold lies between 0 and 1.
            face_min_confidence=config.number(
                env, "FACE_MIN_CONFIDENCE", defaults.face_min_confidence, minimum=0, maximum=1
            ),
            face_tile_min_confidence=config.number(
                env, "FACE_TILE_MIN_CONFIDENCE", defaults.face_tile_min_confidence, minimum=0, maximum=1
            ),
            face_sideways_min_confidence=config.number(
                env, "FACE_SIDEWAYS_MIN_CONFIDENCE", defaults.face_sideways_min_confidence, minimum=0, maximum=1
            ),
            face_tile_long_side=tile_long_side,
            face_sideways=config.flag(env, "FACE_SIDEWAYS", defaults.face_sideways),
            max_input_bytes=config.integer(env, "VISION_MAX_INPUT_BYTES", defaults.max_input_bytes, minimum=1),
            max_pixels=config.integer(env, "VISION_MAX_PIXELS", defaults.max_pixels, minimum=1),
            decode_memory_mb=config.integer(env, "VISION_DECODE_MEMORY_MB", defaults.decode_memory_mb, minimum=1),
        )

