"""The durable intake and the metrics, wired the way the application needs them.

compose and k8s run the JetStream intake (INTAKE=jetstream): the gateway publishes each verified webhook to
NATS and answers, and `python -m gateway.intake.worker`, its own Deployment / service with the gateway's image
and Settings, processes it. Neither keeps anything on local disk, so both scale freely. /metrics on the gateway
sums gunicorn's workers through PROMETHEUS_MULTIPROC_DIR, which must be an empty, private, writable directory;
the worker serves its own /metrics and /healthz on WORKER_METRICS_PORT. Each check reads the setting through the
application's own Settings.from_env, so a port or path cannot drift from what the code uses.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.conftest import TARGETS
from tests.deploy.k8s_objects import container, one, pod_spec, resolved_env, workload, workloads

Docs = dict[str, list[dict[str, Any]]]
Model = dict[str, Any]

WORKER_COMMAND = ["python", "-m", "gateway.intake.worker"]
# service -> (its package, the variable that names its metrics port, the Settings field that reads it)
METRICS = {"audio": ("audio_service", "AUDIO_METRICS_PORT", "metrics_port"),
           "vision": ("vision_service", "VISION_METRICS_PORT", "metrics_port"),
           "worker": ("gateway", "WORKER_METRICS_PORT", "worker_metrics_port")}
# What only one of the two is given: the gateway's gunicorn workers share a metrics directory, the worker
# serves its own port.
GATEWAY_ONLY = {"PROMETHEUS_MULTIPROC_DIR"}
WORKER_ONLY = {"WORKER_METRICS_PORT"}


def _settings(package: str, env: dict[str, str]) -> Any:
    return importlib.import_module(f"{package}.config").Settings.from_env(env)


def _mounts(item: dict[str, Any]) -> dict[str, str]:
    """k8s container: volume name -> mount path."""
    return {m["name"]: m["mountPath"] for m in item.get("volumeMounts", [])}


# --- Kubernetes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_worker_runs_from_the_gateway_image_with_its_settings(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    runs_gateway_image = [w["metadata"]["name"] for w in workloads(docs)
                          if any(c["image"].startswith("mediabot/gateway:") for c in pod_spec(w)["containers"])]
    assert sorted(runs_gateway_image) == ["gateway", "worker"]
    gateway, worker = container(workload(docs, "gateway"), "gateway"), container(workload(docs, "worker"), "worker")
    assert worker["command"] == WORKER_COMMAND and not worker.get("args")
    assert "command" not in gateway and "args" not in gateway, "the image's entrypoint is gunicorn"
    assert worker["image"] == gateway["image"]
    gateway_env, worker_env = resolved_env(docs, gateway), resolved_env(docs, worker)
    assert set(gateway_env) - GATEWAY_ONLY == set(worker_env) - WORKER_ONLY
    assert {k: v for k, v in gateway_env.items() if k not in GATEWAY_ONLY} == {
        k: v for k, v in worker_env.items() if k not in WORKER_ONLY}, "the worker reads the same Settings"


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_and_worker_use_the_jetstream_intake_of_the_nats_cluster(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    nats = one(docs, "StatefulSet", "nats")
    for name in ("gateway", "worker"):
        settings = _settings("gateway", resolved_env(docs, container(workload(docs, name), name)))
        assert settings.intake == "jetstream", name
        # Every message on every server: one server (node, volume) lost loses nothing.
        assert settings.nats_replicas == nats["spec"]["replicas"] == 3, name
        assert settings.nats_url == "nats://nats:4222", name


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["gateway", "worker"])
def test_gateway_and_worker_keep_nothing_on_disk(rendered: Docs, target: str, name: str) -> None:
    """Stateless Deployments: no claim, no spool directory; what is accepted lives in NATS."""
    docs = rendered[target]
    pod = workload(docs, name)
    assert pod["kind"] == "Deployment", f"{name}: nothing of its own to keep, so a Deployment"
    assert "volumeClaimTemplates" not in pod["spec"]
    volumes = pod_spec(pod).get("volumes", [])
    assert all(set(v) - {"name"} == {"emptyDir"} for v in volumes), f"{name}: {volumes}"
    env = resolved_env(docs, container(pod, name))
    assert "SPOOL_DIR" not in env, f"{name}: the spool is `make run`'s intake, not the cluster's"


@pytest.mark.parametrize("target", TARGETS)
def test_worker_is_probed_on_its_own_port_and_stops_after_its_attempt(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    pod = workload(docs, "worker")
    item = container(pod, "worker")
    settings = _settings("gateway", resolved_env(docs, item))
    assert settings.worker_metrics_port > 0, "WORKER_METRICS_PORT is off: nothing to probe"
    assert {p["name"]: p["containerPort"] for p in item["ports"]} == {"metrics": settings.worker_metrics_port}
    for kind in ("livenessProbe", "readinessProbe"):
        assert item[kind]["httpGet"] == {"path": "/healthz", "port": settings.worker_metrics_port}, kind
    # The worker finishes the attempt in hand on SIGTERM; the pod must give it that long.
    assert pod_spec(pod)["terminationGracePeriodSeconds"] > settings.spool_attempt_budget_s


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_metrics_directory_is_a_fresh_private_emptydir(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    pod = workload(docs, "gateway")
    volumes = {v["name"]: v for v in pod_spec(pod)["volumes"]}
    item = container(pod, "gateway")
    directory = resolved_env(docs, item).get("PROMETHEUS_MULTIPROC_DIR")
    assert directory, "no PROMETHEUS_MULTIPROC_DIR"
    (volume,) = [v for v, path in _mounts(item).items() if path == directory]
    assert "emptyDir" in volumes[volume], f"{directory} must start empty with the pod"
    assert [c["name"] for c in pod_spec(pod)["containers"]] == ["gateway"], "no other writer shares it"
    assert not pod_spec(pod).get("shareProcessNamespace")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("service", METRICS)
def test_service_metrics_port_is_the_container_port_it_listens_on(rendered: Docs, target: str, service: str) -> None:
    docs = rendered[target]
    package, variable, field = METRICS[service]
    pod = workload(docs, service)
    item = container(pod, service)
    env = resolved_env(docs, item)
    port = getattr(_settings(package, env), field)
    assert port > 0, f"{variable} is off"
    assert {p["name"]: p["containerPort"] for p in item["ports"]}.get("metrics") == port
    assert pod["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)


# --- docker compose -------------------------------------------------------------------------------------


def _env(service: Model) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in service["environment"].items()}


def test_compose_worker_runs_from_the_gateway_image_with_its_environment(compose: Model) -> None:
    gateway, worker = compose["services"]["gateway"], compose["services"]["worker"]
    assert worker["image"] == gateway["image"]
    assert worker["entrypoint"] == WORKER_COMMAND and not worker.get("command")
    gateway_env, worker_env = _env(gateway), _env(worker)
    assert {k: v for k, v in gateway_env.items() if k not in GATEWAY_ONLY} == {
        k: v for k, v in worker_env.items() if k not in WORKER_ONLY}
    assert set(gateway_env) >= GATEWAY_ONLY and set(worker_env) >= WORKER_ONLY
    assert worker["restart"] == "unless-stopped"
    budget = _settings("gateway", worker_env).spool_attempt_budget_s
    assert float(worker["stop_grace_period"].rstrip("s")) > budget, "SIGTERM lets the attempt in hand finish"


def test_compose_gateway_and_worker_use_the_jetstream_intake_of_service_nats(compose: Model) -> None:
    services = compose["services"]
    nats = services["nats"]
    for name in ("gateway", "worker"):
        settings = _settings("gateway", _env(services[name]))
        assert settings.intake == "jetstream" and settings.nats_url == "nats://nats:4222", name
        assert settings.nats_replicas == 1, f"{name}: one server, one copy"
        assert services[name]["depends_on"]["nats"]["condition"] == "service_healthy", name
        assert not any(v["target"] == str(settings.spool_dir) for v in services[name].get("volumes", [])), name
    assert "4222" in nats["expose"] and not nats.get("ports"), "NATS on the backend network only"
    assert nats["networks"] == {"backend": None} or set(nats["networks"]) == {"backend"}
    assert "--jetstream" in nats["command"]
    store = nats["command"][nats["command"].index("--store_dir") + 1]
    (data,) = [v for v in nats["volumes"] if v["target"] == store]
    assert data["type"] == "volume" and data["source"] == "nats-data", "JetStream's store outlives the container"
    assert "healthz?js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])


def test_compose_nats_flags_are_the_pinned_servers_own() -> None:
    """The flags compose passes exist in the nats-server the image pins (the same version as the tests' binary)."""
    model = yaml.safe_load(tools.COMPOSE_FILE.read_text(encoding="utf-8"))
    nats = model["services"]["nats"]
    result = tools.run([tools.nats_server(), "--help"])
    flags = [arg for arg in nats["command"] if arg.startswith("-")]
    assert flags and all(f" {flag} " in result.stdout + result.stderr for flag in flags), flags
    assert nats["image"] == f"nats:{tools.nats_server_version()}-alpine"


def test_compose_gateway_metrics_volume_is_a_private_tmpfs(compose: Model) -> None:
    services = compose["services"]
    metrics_dir = _env(services["gateway"])["PROMETHEUS_MULTIPROC_DIR"]
    (metrics,) = [v for v in services["gateway"]["volumes"] if v["target"] == metrics_dir]
    assert metrics["type"] == "volume" and metrics["source"] == "gateway-metrics"
    assert not any(v["source"] == "gateway-metrics" for v in services["worker"].get("volumes", [])), \
        "the worker serves its own /metrics"
    options = compose["volumes"]["gateway-metrics"]["driver_opts"]
    assert options["type"] == "tmpfs" and "uid=10001" in options["o"]
    assert not services["gateway"].get("init"), "PIDs name the metrics files"


def test_compose_worker_healthcheck_asks_its_own_port(compose: Model) -> None:
    worker = compose["services"]["worker"]
    port = _settings("gateway", _env(worker)).worker_metrics_port
    assert port > 0 and str(port) in worker["expose"] and not worker.get("ports")
    test = " ".join(worker["healthcheck"]["test"])
    assert "/healthz" in test and "WORKER_METRICS_PORT" in test


def test_gateway_image_owns_the_spool_mount_point() -> None:
    """The image's default intake is still the spool (INTAKE unset): a fresh named volume mounted there takes
    the directory's ownership, and root-owned, uid 10001 could not write it."""
    text = (tools.REPO / "gateway" / "Dockerfile").read_text(encoding="utf-8")
    assert "install -d -o 10001 -g 10001" in text and "/var/lib/mediabot/spool" in text
    assert "SPOOL_DIR=/var/lib/mediabot/spool" in text


@pytest.mark.parametrize("service", ["audio", "vision"])
def test_compose_metrics_port_is_exposed_on_the_backend_only(compose: Model, service: str) -> None:
    package, variable, field = METRICS[service]
    item = compose["services"][service]
    port = getattr(_settings(package, _env(item)), field)
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
    """The retry and security settings reach the gateway from .env, not just their defaults."""
    text = Path(tools.COMPOSE_FILE).read_text(encoding="utf-8")
    for name in ("SPOOL_RETRY_BASE_S", "SPOOL_RETRY_MAX_S", "SPOOL_GIVE_UP_AFTER_S", "SPOOL_POLL_S",
                 "SPOOL_ATTEMPT_BUDGET_S", "WORKER_METRICS_PORT", "MEDIA_ALLOW_PRIVATE_ADDRESSES", "GRPC_MAX_ATTEMPTS", "TELEGRAM_BOT_TOKEN",
                 "TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_API_BASE_URL"):
        assert f"${{{name}:-" in text, name
