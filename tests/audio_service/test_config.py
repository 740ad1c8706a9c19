"""Settings.from_env: the defaults, and a readable refusal for each kind of bad value."""

from __future__ import annotations

import os
import re

import pytest

from audio_service.config import Settings
from mediabot.config import ConfigError


def test_defaults_fit_whatsapp() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.max_input_bytes == 16 * 1024 * 1024
    assert settings.max_duration_s == 900
    assert settings.workers == (os.cpu_count() or 1)
    assert settings.grace_s == 10
    assert settings.log_level == "INFO"
    assert settings.tmp_dir is None
    assert settings.max_concurrent_rpcs == settings.workers + settings.max_queued


def test_values_are_read_from_the_environment(tmp_path) -> None:
    settings = Settings.from_env({
        "AUDIO_LISTEN": "0.0.0.0:50051",
        "AUDIO_MAX_INPUT_BYTES": "1048576",
        "AUDIO_MAX_DURATION_S": "60",
        "AUDIO_WORKERS": "3",
        "AUDIO_MAX_QUEUED": "0",
        "AUDIO_GRACE_S": "2.5",
        "LOG_LEVEL": "debug",
        "AUDIO_FFMPEG": "/usr/bin/ffmpeg",
        "AUDIO_TMP_DIR": str(tmp_path),
    })
    assert settings == Settings(listen="0.0.0.0:50051", max_input_bytes=1048576, max_duration_s=60.0, workers=3,
                                max_queued=0, grace_s=2.5, log_level="DEBUG", ffmpeg="/usr/bin/ffmpeg",
                                tmp_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUDIO_LISTEN", "50051"),
        ("AUDIO_LISTEN", "localhost:"),
        ("AUDIO_LISTEN", "0.0.0.0:70000"),
        ("AUDIO_LISTEN", "http://0.0.0.0:50051"),
        ("AUDIO_MAX_INPUT_BYTES", "16MB"),
        ("AUDIO_MAX_INPUT_BYTES", "0"),
        ("AUDIO_MAX_DURATION_S", "nan"),
        ("AUDIO_MAX_DURATION_S", "inf"),
        ("AUDIO_WORKERS", "0"),
        ("AUDIO_GRACE_S", "-1"),
        ("LOG_LEVEL", "LOUD"),
        ("AUDIO_TMP_DIR", "/no/such/dir"),
        ("AUDIO_METRICS_PORT", "70000"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got '{re.escape(value)}'$"):
        Settings.from_env({name: value})


@pytest.mark.parametrize("listen", ["[::]:50051", "localhost:0", "audio:50051"])
def test_listen_takes_any_host_and_port(listen: str) -> None:
    assert Settings.from_env({"AUDIO_LISTEN": listen}).listen == listen
