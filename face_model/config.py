"""Settings of the local Triton launcher (``python -m face_model.triton_local``), read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value the launcher cannot use; the message names the variable."""


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a TCP port (1-65535), got {raw!r}")
    return int(raw)


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
        env = os.environ if env is None else env
        ports = {
            "http_port": _port(env, "TRITON_HTTP_PORT", cls.http_port),
            "grpc_port": _port(env, "TRITON_GRPC_PORT", cls.grpc_port),
            "metrics_port": _port(env, "TRITON_METRICS_PORT", cls.metrics_port),
        }
        if len(set(ports.values())) != 3:
            raise ConfigError(f"TRITON_HTTP_PORT, TRITON_GRPC_PORT and TRITON_METRICS_PORT must differ, got {ports}")
        repository = Path(env.get("MODEL_REPOSITORY", "").strip() or cls.model_repository)
        if not repository.is_dir():
            raise ConfigError(f"MODEL_REPOSITORY {str(repository)!r} is not a directory")
        log_level = (env.get("LOG_LEVEL", "").strip() or cls.log_level).upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {log_level!r}")
        return cls(
            **ports,
            bind_address=env.get("TRITON_BIND_ADDRESS", "").strip() or cls.bind_address,
            model_repository=repository.resolve(),
            work_dir=Path(env.get("TRITON_WORK_DIR", "").strip() or cls.work_dir).resolve(),
            log_level=log_level,
        )
