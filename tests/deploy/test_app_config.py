"""The manifests against the application's own configuration: every service accepts the environment that
Kubernetes and compose give it (through its real Settings.from_env), sets no variable it does not read,
and is probed on paths it serves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from mediabot.config import ServerSettings
from tests.deploy import tools
from tests.deploy.conftest import FAKE_SECRETS, OVERLAYS
from tests.deploy.k8s_objects import container, one, resolved_env, workload as workload_named

Docs = dict[str, list[dict[str, Any]]]

# Workload (k8s Deployment / compose service) -> the package whose config.py reads its environment.
PACKAGES = {"gateway": "gateway", "audio": "audio_service", "vision": "vision_service"}
# Compose service / k8s (workload, container) -> package: the intake worker reads the gateway's Settings.
COMPOSE_SERVICES = {**PACKAGES, "worker": "gateway"}
K8S_CONTAINERS = {("gateway", "gateway"): "gateway", ("worker", "worker"): "gateway",
                  ("audio", "audio"): "audio_service", ("vision", "vision"): "vision_service"}
# Read by a library rather than by config.py, each with the module of ours that relies on it.
LIBRARY_VARIABLES = {"gateway": {"PROMETHEUS_MULTIPROC_DIR": "gateway/metrics.py"}}


def _variables_read_by(package: str) -> set[str]:
    """Environment variable names config.py mentions: each service reads its environment there and only there,
    except a library's own variable (prometheus-client's PROMETHEUS_MULTIPROC_DIR), checked where it is used,
    and the gRPC services' shared ones (AUDIO_LISTEN, ...), which mediabot.config.ServerSettings lists."""
    source = (tools.REPO / package / "config.py").read_text(encoding="utf-8")
    library = LIBRARY_VARIABLES.get(package, {})
    for name, user in library.items():
        assert name in (tools.REPO / user).read_text(encoding="utf-8"), f"{user} no longer reads {name}"
    settings = importlib.import_module(f"{package}.config").Settings
    shared = settings.variables() if issubclass(settings, ServerSettings) else ()
    return set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source)) | set(library) | set(shared)


def _settings(package: str, env: dict[str, str]) -> Any:
    return importlib.import_module(f"{package}.config").Settings.from_env(env)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("where", K8S_CONTAINERS, ids="/".join)
def test_service_accepts_its_kubernetes_environment(rendered: Docs, overlay: str, where: tuple[str, str]) -> None:
    docs = rendered[overlay]
    workload, name = where
    package = K8S_CONTAINERS[where]
    env = resolved_env(docs, container(workload_named(docs, workload), name))
    unknown = set(env) - _variables_read_by(package)
    assert not unknown, f"{workload}/{name} is given {sorted(unknown)}, which {package}/config.py never reads"
    settings = _settings(package, env)
    if package == "gateway":
        config = one(docs, "ConfigMap", "mediabot-config")["data"]
        assert settings.public_base_url == config["PUBLIC_BASE_URL"]
        assert settings.trust_proxy is False
        assert settings.dev_credentials is False, "the Secret's Twilio credentials must reach the gateway"
        assert settings.twilio_auth_token == FAKE_SECRETS["TWILIO_AUTH_TOKEN"]
        assert settings.storage == "minio"


@pytest.mark.parametrize("workload", COMPOSE_SERVICES)
def test_service_accepts_its_compose_environment(compose: dict[str, Any], workload: str) -> None:
    package = COMPOSE_SERVICES[workload]
    env = {key: "" if value is None else str(value) for key, value in compose["services"][workload]["environment"].items()}
    unknown = set(env) - _variables_read_by(package)
    assert not unknown, f"{workload} is given {sorted(unknown)}, which {package}/config.py never reads"
    settings = _settings(package, env)
    if package == "gateway":
        (published,) = compose["services"]["gateway"]["ports"]
        assert settings.gateway_port == int(published["published"]), "GATEWAY_PORT names the published host port"
        assert settings.storage == "minio"


def test_gateway_serves_the_probed_paths(tmp_path: Path, rendered: Docs, compose: dict[str, Any]) -> None:
    from gateway import create_app
    from gateway.config import WEBHOOK_PATH

    app = create_app({"STORAGE": "filesystem", "MEDIA_ROOT": str(tmp_path), "PUBLIC_BASE_URL": "", "TRUST_PROXY": "0"})
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    gateway = container(workload_named(rendered["overlays/gpu"], "gateway"), "gateway")
    probed = {gateway["livenessProbe"]["httpGet"]["path"], gateway["readinessProbe"]["httpGet"]["path"]}
    assert probed == {"/healthz", "/readyz"} and probed <= routes
    assert WEBHOOK_PATH in routes
    assert "/readyz" in " ".join(compose["services"]["gateway"]["healthcheck"]["test"])
