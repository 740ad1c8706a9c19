"""Settings.from_env: defaults, and a readable refusal naming the variable for each bad value."""

from __future__ import annotations

import re
import pytest

from mediabot.config import ConfigError
from vision_service.config import Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50052"
    assert settings.triton_url == "127.0.0.1:8001"
    assert settings.triton_model == "face_detector"
    assert settings.triton_model_version == ""
    assert settings.max_input_bytes == 16 * 1024 * 1024
    assert settings.max_message_bytes > settings.max_input_bytes
    assert 0 < settings.face_min_confidence < 1


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "VISION_LISTEN": "0.0.0.0:6000",
            "TRITON_URL": "triton:8001",
            "TRITON_MODEL": "faces",
            "TRITON_MODEL_VERSION": "3",
            "TRITON_TIMEOUT_S": "2.5",
            "FACE_MIN_CONFIDENCE": "0.8",
            "VISION_MAX_INPUT_BYTES": "1000",
            "VISION_MAX_PIXELS": "2000",
            "VISION_DECODE_MEMORY_MB": "64",
            "VISION_WORKERS": "3",
            "VISION_MAX_QUEUED": "0",
            "VISION_GRACE_S": "0",
            "LOG_LEVEL": "debug",
            "FACE_TILE_MIN_CONFIDENCE": "0.7",
            "FACE_SIDEWAYS_MIN_CONFIDENCE": "0.95",
            "FACE_TILE_LONG_SIDE": "600",
            "FACE_SIDEWAYS": "false",
        }
    )
    assert (settings.face_tile_min_confidence, settings.face_sideways_min_confidence) == (0.7, 0.95)
    assert (settings.face_tile_long_side, settings.face_sideways) == (600, False)
    assert (settings.listen, settings.triton_url, settings.triton_model) == ("0.0.0.0:6000", "triton:8001", "faces")
    assert (settings.triton_model_version, settings.triton_timeout_s, settings.face_min_confidence) == ("3", 2.5, 0.8)
    assert (settings.max_input_bytes, settings.max_pixels, settings.workers) == (1000, 2000, 3)
    assert settings.decode_memory_bytes == 64 * 1024 * 1024
    assert (settings.max_concurrent_rpcs, settings.grace_s, settings.log_level) == (3, 0.0, "DEBUG")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VISION_LISTEN", "50052"),
        ("TRITON_URL", "localhost"),
        ("TRITON_URL", "grpc://triton:8001"),
        ("VISION_LISTEN", "[not-ipv6]:50052"),
        ("TRITON_MODEL_VERSION", "latest"),
        ("TRITON_TIMEOUT_S", "0"),
        ("TRITON_TIMEOUT_S", "nan"),
        ("FACE_MIN_CONFIDENCE", "1.5"),
        ("FACE_MIN_CONFIDENCE", "high"),
        ("VISION_MAX_INPUT_BYTES", "16MiB"),
        ("VISION_MAX_PIXELS", "0"),
        ("VISION_DECODE_MEMORY_MB", "0"),
        ("VISION_WORKERS", "0"),
        ("VISION_GRACE_S", "-1"),
        ("LOG_LEVEL", "LOUD"),
        ("FACE_TILE_MIN_CONFIDENCE", "2"),
        ("FACE_SIDEWAYS_MIN_CONFIDENCE", "-0.1"),
        ("FACE_TILE_LONG_SIDE", "300"),
        ("FACE_TILE_LONG_SIDE", "5000"),
        ("FACE_TILE_LONG_SIDE", "big"),
        ("FACE_SIDEWAYS", "maybe"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got '{re.escape(value)}'$"):
        Settings.from_env({name: value})


def test_tiles_can_be_turned_off() -> None:
    assert Settings.from_env({"FACE_TILE_LONG_SIDE": "0"}).face_tile_long_side == 0
