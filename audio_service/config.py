"""The audio service's configuration, read from the environment in one place and checked before anything starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from mediabot import config, limits


@dataclass(frozen=True)
class Settings(config.ServerSettings):
    """Everything the service can be tuned with; defaults fit WhatsApp's own limits."""

    ENV_PREFIX: ClassVar[str] = "AUDIO"

    listen: str = "127.0.0.1:50051"
    # WhatsApp refuses media over 16 MiB, so a bigger input is not a voice note.
    max_input_bytes: int = limits.DEFAULT_MAX_MEDIA_BYTES
    # Longest audio accepted, enforced while decoding (a small file can expand to hours). The gateway reads the
    # same variable, with the same default, to size the WAV it receives.
    max_duration_s: float = limits.DEFAULT_MAX_AUDIO_DURATION_S
    # Conversions running at once; each is one ffmpeg process, so more than the CPU count only adds latency.
    workers: int = os.cpu_count() or 1
    # The ffmpeg binary (a name on PATH or a path).
    ffmpeg: str = "ffmpeg"
    # Where the per-call private temp directories are made; None means the system's (TMPDIR).
    tmp_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (or ``env``); raise ConfigError naming the variable on any bad value."""
        env = os.environ if env is None else env
        defaults = cls()
        tmp_dir = config.directory(env, "AUDIO_TMP_DIR", None)
        return cls(
            **cls.server_fields(env),
            max_input_bytes=config.integer(env, "AUDIO_MAX_INPUT_BYTES", defaults.max_input_bytes, minimum=1),
            max_duration_s=config.number(env, "AUDIO_MAX_DURATION_S", defaults.max_duration_s, minimum=1),
            ffmpeg=config.text(env, "AUDIO_FFMPEG", defaults.ffmpeg),
            tmp_dir=None if tmp_dir is None else str(tmp_dir),
        )
