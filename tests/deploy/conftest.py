"""Rendered manifests and compose models, built once per session by the real tools (see tools.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy import tools

# Stand-ins an operator would put in k8s/base/secrets.env or .env: well-formed, obviously not real.
FAKE_SECRETS = {
    "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
    "TWILIO_AUTH_TOKEN": "test-auth-token-not-real",
    "MINIO_ROOT_USER": "minio-root-test",
    "MINIO_ROOT_PASSWORD": "test-root-password-not-real",
    "MINIO_ACCESS_KEY": "mediabot-test",
    "MINIO_SECRET_KEY": "test-secret-not-real",
}
# compose's .env also names the public URL (k8s takes it from config.env, the overlays set it).
COMPOSE_ENV = {**FAKE_SECRETS, "PUBLIC_BASE_URL": "https://mediabot.example.com"}

TARGETS = ("base", "overlays/gpu", "overlays/cpu")
OVERLAYS = ("overlays/gpu", "overlays/cpu")


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every kustomization target, rendered with kubectl's Kustomize from a copy of k8s/ with fake secrets."""
    root = tools.copy_k8s(tmp_path_factory.mktemp("k8s"), FAKE_SECRETS)
    return {target: tools.kustomize(root / target) for target in TARGETS}


@pytest.fixture(scope="session")
def compose_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .env an operator writes: what compose requires (Twilio, the public URL, MinIO's keys), nothing else."""
    path = tmp_path_factory.mktemp("compose") / "env"
    path.write_text("".join(f"{key}={value}\n" for key, value in COMPOSE_ENV.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def compose(compose_env_file: Path) -> dict[str, Any]:
    """docker-compose.yml with every profile, as `docker compose config` resolves it."""
    return tools.compose_model(compose_env_file, tools.COMPOSE_FILE, profiles=("ngrok",))


@pytest.fixture(scope="session")
def compose_gpu(compose_env_file: Path) -> dict[str, Any]:
    return tools.compose_model(compose_env_file, tools.COMPOSE_FILE, tools.COMPOSE_GPU_FILE)
