"""The durable intake and the metrics, wired the way the application needs them.

The gateway spools every verified webhook under SPOOL_DIR and `python -m gateway.intake.worker` retries what failed;
both hold fcntl.flock leases on the same files, so wherever a gateway runs a worker must share its spool on
one node's filesystem. /metrics sums gunicorn's workers (and the spool worker) through
PROMETHEUS_MULTIPROC_DIR, which must be an empty, private, writable directory. Each check reads the setting
through the application's own Settings.from_env, so a port or path cannot drift from what the code uses.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.conftest import TARGETS
from tests.deploy.k8s_objects import container, pod_spec, resolved_env, workload, workloads

Docs = dict[str, list[dict[str, Any]]]
Model = dict[str, Any]

WORKER_COMMAND = ["python", "-m", "gateway.intake.worker"]
# service -> (its package, the variable that names its metrics port)
METRICS = {"audio": ("audio_service", "AUDIO_METRICS_PORT"), "vision": ("vision_service", "VISION_METRICS_PORT")}


def _settings(package: str, env: dict[str, str]) -> Any:
    return importlib.import_module(f"{package}.config").Settings.from_env(env)


def _mounts(item: dict[str, Any]) -> dict[str, str]:
    """k8s container: volume name -> mount path."""
    return {m["name"]: m["mountPath"] for m in item.get("volumeMounts", [])}


# --- Kubernetes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_gateway_pod_has_a_spool_worker_with_the_same_image_and_environment(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    gateways = [w for w in workloads(docs) if any(c["image"].startswith("mediabot/gateway:") for c in w["spec"]["template"]["spec"]["containers"])]
    assert [w["metadata"]["name"] for w in gateways] == ["gateway"], "the gateway image runs in the gateway pod only"
    pod = gateways[0]
    gateway, worker = container(pod, "gateway"), container(pod, "worker")
    assert worker["command"] == WORKER_COMMAND and not worker.get("args")
    assert worker["image"] == gateway["image"]
    assert resolved_env(docs, worker) == resolved_env(docs, gateway), "the worker reads the same Settings"


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_and_worker_share_a_per_pod_persistent_spool(rendered: Docs, target: str) -> None:
    """A ReadWriteOnce claim per replica (StatefulSet), mounted by both containers at SPOOL_DIR."""
    docs = rendered[target]
    pod = workload(docs, "gateway")
    assert pod["kind"] == "StatefulSet", "per-replica spool claims need a StatefulSet (flock: one node per spool)"
    (claim,) = [t for t in pod["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == "spool"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "spool" not in {v["name"] for v in pod_spec(pod).get("volumes", [])}, "the template, not a shared volume"
    assert pod_spec(pod)["securityContext"].get("fsGroup") == pod_spec(pod)["securityContext"]["runAsGroup"], "uid 10001 must write the claim"
    for name in ("gateway", "worker"):
        item = container(pod, name)
        settings = _settings("gateway", resolved_env(docs, item))
        assert _mounts(item).get("spool") == str(settings.spool_dir), f"{name}: SPOOL_DIR is not the spool claim"
    # The worker finishes the attempt in hand on SIGTERM; the pod must give it that long.
    budget = _settings("gateway", resolved_env(docs, container(pod, "worker"))).spool_attempt_budget_s
    assert pod_spec(pod)["terminationGracePeriodSeconds"] > budget


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_metrics_directory_is_a_fresh_emptydir_shared_with_the_worker(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    pod = workload(docs, "gateway")
    volumes = {v["name"]: v for v in pod_spec(pod)["volumes"]}
    for name in ("gateway", "worker"):
        item = container(pod, name)
        directory = resolved_env(docs, item).get("PROMETHEUS_MULTIPROC_DIR")
        assert directory, f"{name}: no PROMETHEUS_MULTIPROC_DIR"
        (volume,) = [v for v, path in _mounts(item).items() if path == directory]
        assert "emptyDir" in volumes[volume], f"{name}: {directory} must start empty with the pod"
        assert volume == "metrics"
    # Multiprocess files are named by PID: separate PID namespaces keep the worker (PID 1) apart from
    # gunicorn's workers (never PID 1, its master is).
    assert not pod_spec(pod).get("shareProcessNamespace")
    assert container(pod, "worker")["command"][0] == "python"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("service", METRICS)
def test_service_metrics_port_is_the_container_port_it_listens_on(rendered: Docs, target: str, service: str) -> None:
    docs = rendered[target]
    package, variable = METRICS[service]
    pod = workload(docs, service)
    item = container(pod, service)
    env = resolved_env(docs, item)
    port = _settings(package, env).metrics_port
    assert port > 0, f"{variable} is off"
    assert {p["name"]: p["containerPort"] for p in item["ports"]}.get("metrics") == port
    assert pod["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)


# --- docker compose -------------------------------------------------------------------------------------


def _volume(service: Model, target: str) -> Model:
    found = [v for v in service.get("volumes", []) if v["target"] == target]
    assert len(found) == 1, f"nothing mounted at {target}"
    return found[0]


def test_compose_worker_runs_from_the_gateway_image_with_its_environment(compose: Model) -> None:
    gateway, worker = compose["services"]["gateway"], compose["services"]["worker"]
    assert worker["image"] == gateway["image"]
    assert worker["entrypoint"] == WORKER_COMMAND and not worker.get("command")
    assert worker["environment"] == gateway["environment"]
    assert worker["restart"] == "unless-stopped"
    budget = _settings("gateway", {k: str(v) for k, v in worker["environment"].items()}).spool_attempt_budget_s
    assert float(worker["stop_grace_period"].rstrip("s")) > budget, "SIGTERM lets the attempt in hand finish"


def test_compose_gateway_and_worker_share_the_spool_and_metrics_volumes(compose: Model) -> None:
    services = compose["services"]
    env = {k: str(v) for k, v in services["gateway"]["environment"].items()}
    spool_dir = str(_settings("gateway", env).spool_dir)
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    for name in ("gateway", "worker"):
        spool = _volume(services[name], spool_dir)
        assert spool["type"] == "volume" and spool["source"] == "gateway-spool", f"{name}: the spool must be the named volume"
        metrics = _volume(services[name], metrics_dir)
        assert metrics["type"] == "volume" and metrics["source"] == "gateway-metrics", name
    # A named volume outlives containers: the spool persists. The metrics one is a tmpfs, empty at each start.
    options = compose["volumes"]["gateway-metrics"]["driver_opts"]
    assert options["type"] == "tmpfs" and "uid=10001" in options["o"]
    assert "driver_opts" not in compose["volumes"]["gateway-spool"]
    assert not services["gateway"].get("init") and not services["worker"].get("init"), "PIDs name the metrics files"


def test_gateway_image_owns_the_spool_mount_point() -> None:
    """A fresh named volume takes the ownership of the image's directory; root-owned, uid 10001 could not write."""
    text = (tools.REPO / "gateway" / "Dockerfile").read_text(encoding="utf-8")
    assert "install -d -o 10001 -g 10001" in text and "/var/lib/mediabot/spool" in text
    assert "SPOOL_DIR=/var/lib/mediabot/spool" in text


@pytest.mark.parametrize("service", METRICS)
def test_compose_metrics_port_is_exposed_on_the_backend_only(compose: Model, service: str) -> None:
    package, variable = METRICS[service]
    item = compose["services"][service]
    port = _settings(package, {k: str(v) for k, v in item["environment"].items()}).metrics_port
    assert port > 0 and str(port) in item["expose"], f"{variable}={port} is not exposed"
    assert not item.get("ports"), "metrics are not published on the host"


def test_ngrok_forwards_only_the_webhooks(compose: Model) -> None:
    """ngrok forwards everything to gateway:8080, which also serves /metrics: its traffic policy must 404 the rest."""
    from gateway.config import TELEGRAM_WEBHOOK_PATH, WEBHOOK_PATH

    ngrok = compose["services"]["ngrok"]
    flag = next(a for a in ngrok["command"] if a.startswith("--traffic-policy-file="))
    (config,) = [c for c in ngrok["configs"] if c["target"] == flag.partition("=")[2]]
    policy = yaml.safe_load(compose["configs"][config["source"]]["content"])
    (rule,) = policy["on_http_request"]
    paths = ", ".join(f"'{path}', '{path}/'" for path in (WEBHOOK_PATH, TELEGRAM_WEBHOOK_PATH))
    assert rule["expressions"] == [f"!(req.url.path in [{paths}])"]
    assert rule["actions"] == [{"type": "custom-response", "config": {"status_code": 404, "body": "not found"}}]


def test_compose_file_mentions_every_new_gateway_setting() -> None:
    """The durable-intake and security settings reach the gateway from .env, not just their defaults."""
    text = Path(tools.COMPOSE_FILE).read_text(encoding="utf-8")
    for name in ("SPOOL_RETRY_BASE_S", "SPOOL_RETRY_MAX_S", "SPOOL_GIVE_UP_AFTER_S", "SPOOL_POLL_S",
                 "SPOOL_ATTEMPT_BUDGET_S", "MEDIA_ALLOW_PRIVATE_ADDRESSES", "GRPC_MAX_ATTEMPTS", "TELEGRAM_BOT_TOKEN",
                 "TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_API_BASE_URL"):
        assert f"${{{name}:-" in text, name
