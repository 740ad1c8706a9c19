"""Settings of the local Triton launcher (``python -m face_model.triton_local``), read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mediabot import config


@dataclass(frozen=True)
class Settings:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # Loopback by default: nothing but the local services should reach Triton. A container sets 0.0.0.0.
    bind_address: str = "127.0.0.1"
    model_repository: Path = Path("model_repository")
    # Where the launcher assembles Triton's backend directory (gitignored).
    work_dir: Path = Path(".triton")
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the environment (or ``env``); raise ConfigError naming the variable on any bad value."""
        env = os.environ if env is None else env
        ports = {
            "http_port": config.port(env, "TRITON_HTTP_PORT", cls.http_port),
            "grpc_port": config.port(env, "TRITON_GRPC_PORT", cls.grpc_port),
            "metrics_port": config.port(env, "TRITON_METRICS_PORT", cls.metrics_port),
        }
        if len(set(ports.values())) != 3:
            raise config.ConfigError(
                f"TRITON_HTTP_PORT, TRITON_GRPC_PORT and TRITON_METRICS_PORT must differ, got {ports}"
            )
        return cls(
            **ports,
            bind_address=config.text(env, "TRITON_BIND_ADDRESS", cls.bind_address),
            model_repository=config.directory(env, "MODEL_REPOSITORY", cls.model_repository).resolve(),
            work_dir=config.path(env, "TRITON_WORK_DIR", cls.work_dir).resolve(),
            log_level=config.log_level(env, "LOG_LEVEL", cls.log_level),
        )
