"""The cluster's availability rules, on the rendered overlays: NATS JetStream as a 3-node StatefulSet whose
configuration the real nats-server accepts, PodDisruptionBudgets and topology spread for everything that
scales, and the optional KEDA component (k8s/components/keda-worker) rendered into an overlay and validated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy import tools
from tests.deploy.conftest import FAKE_SECRETS, OVERLAYS, TARGETS
from tests.deploy.k8s_objects import (
    container,
    container_ports,
    of_kind,
    one,
    pod_spec,
    resolved_env,
    workload,
    workloads_selected_by,
)

Docs = dict[str, list[dict[str, Any]]]

NATS_CONF = tools.K8S / "base" / "nats" / "nats.conf"
# Compose's single server (one copy of each message): it must fsync before acknowledging.
SINGLE_NATS_CONF = tools.K8S / "base" / "nats" / "single.conf"
# Everything that runs more than one interchangeable pod, and so must survive a drain one pod at a time.
DISRUPTION_BUDGETS = ("gateway", "worker", "audio", "vision", "nats")


def _conf(text: str, key: str) -> str:
    match = re.search(rf"^\s*{key}:\s*(\S+)\s*$", text, re.MULTILINE)
    assert match, f"nats.conf sets no {key}"
    return match.group(1)


def _bytes(quantity: str) -> float:
    """A Kubernetes or NATS size ("10Gi", "8G") in bytes; NATS reads G as 2**30 like Kubernetes' Gi."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity)


# --- NATS ----------------------------------------------------------------------------------------------


def test_nats_configuration_passes_the_real_servers_check(tmp_path: Path) -> None:
    """`nats-server -t` of the version the image pins, with the environment the pod gives it."""
    result = tools.run([tools.nats_server(), "-c", NATS_CONF, "-t"], env={"POD_NAME": "nats-0"})
    assert result.returncode == 0, result.stderr
    broken = tmp_path / "nats.conf"
    broken.write_text(NATS_CONF.read_text(encoding="utf-8").replace("jetstream {", "jetstream {{"), encoding="utf-8")
    assert tools.run([tools.nats_server(), "-c", broken, "-t"], env={"POD_NAME": "nats-0"}).returncode != 0


def test_compose_runs_its_single_nats_server_with_every_write_synced(compose: dict[str, Any]) -> None:
    """One server keeps one copy: an acknowledged message must be on disk, not in the page cache for up to
    the 2 minutes NATS syncs by default (a power loss would lose what the gateway already answered for)."""
    result = tools.run([tools.nats_server(), "-c", SINGLE_NATS_CONF, "-t"])
    assert result.returncode == 0, result.stderr
    assert _conf(SINGLE_NATS_CONF.read_text(encoding="utf-8"), "sync_interval") == "always"
    nats = compose["services"]["nats"]
    command = nats["command"]
    config_path = command[command.index("--config") + 1]
    mounts = {volume["target"]: volume for volume in nats["volumes"]}
    assert Path(mounts[config_path]["source"]).resolve() == SINGLE_NATS_CONF.resolve()
    assert mounts[config_path].get("read_only") is True


@pytest.mark.parametrize("target", TARGETS)
def test_nats_is_a_three_node_jetstream_cluster_on_volume_claims(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    nats = one(docs, "StatefulSet", "nats")
    replicas = nats["spec"]["replicas"]
    assert replicas == 3, "a Raft majority survives one server lost"
    item = container(nats, "nats")
    assert item["image"] == f"nats:{tools.nats_server_version()}-alpine", "the server version the tests check"

    config_map = one(docs, "ConfigMap", "nats-config")
    text = config_map["data"]["nats.conf"]
    assert text == NATS_CONF.read_text(encoding="utf-8")
    mounts = {m["name"]: m["mountPath"] for m in item["volumeMounts"]}
    (config_volume,) = [v for v in pod_spec(nats)["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    assert item["args"] == ["--config", f"{mounts[config_volume['name']]}/nats.conf"]

    # The store on each pod's own claim, with JetStream's cap below the claim's size.
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert mounts[claim["metadata"]["name"]] == _conf(text, "store_dir")
    assert _bytes(_conf(text, "max_file_store")) < _bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert pod_spec(nats)["securityContext"].get("fsGroup") == pod_spec(nats)["securityContext"]["runAsGroup"]

    # server_name is the pod's name: stable for Raft, and what the routes and KEDA's scaler address.
    assert _conf(text, "server_name") == "$POD_NAME"
    assert resolved_env(docs, item)["POD_NAME"] == "$(metadata.name)"
    headless = one(docs, "Service", nats["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    routes = re.findall(r"nats://([\w.-]+):(\d+)", text[text.index("routes"):])
    cluster_port = container_ports(nats)["cluster"]
    assert routes == [(f"nats-{i}.{headless['metadata']['name']}", str(cluster_port)) for i in range(replicas)]
    assert int(_conf(text, "port")) == container_ports(nats)["client"] == 4222
    assert int(_conf(text, "http_port")) == container_ports(nats)["monitor"] == 8222


@pytest.mark.parametrize("target", TARGETS)
def test_nats_probes_are_the_official_charts(rendered: Docs, target: str) -> None:
    """Liveness must not run the full JetStream health check: it fails for as long as a restarted server
    recovers its streams, and a liveness probe on it would restart the server in a loop."""
    item = container(one(rendered[target], "StatefulSet", "nats"), "nats")
    paths = {kind: item[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {"startupProbe": "/healthz", "readinessProbe": "/healthz?js-server-only=true",
                     "livenessProbe": "/healthz?js-enabled-only=true"}
    startup = item["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "recovering a store takes a while"
    # Lame duck mode on the way out, through the pid file the configuration names.
    text = NATS_CONF.read_text(encoding="utf-8")
    assert item["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", f"-sl=ldm={_conf(text, 'pid_file')}"]
    grace = pod_spec(one(rendered[target], "StatefulSet", "nats"))["terminationGracePeriodSeconds"]
    assert grace > sum(int(_conf(text, key).rstrip("s")) for key in ("lame_duck_duration", "lame_duck_grace_period"))


# --- disruption budgets and spread --------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_replicated_workload_has_a_disruption_budget(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    budgets = {}
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        (selected,) = workloads_selected_by(docs, pdb["spec"]["selector"])
        budgets[selected["metadata"]["name"]] = pdb
        # One pod at a time: enough for a drain to progress, never a whole service at once.
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}, pdb["metadata"]["name"]
    assert set(budgets) == set(DISRUPTION_BUDGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_everything_that_scales_spreads_over_nodes_and_zones(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    scaled = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in of_kind(docs, "HorizontalPodAutoscaler")}
    for name in (*scaled, "nats"):
        pod = workload(docs, name)
        constraints = {c["topologyKey"]: c for c in pod_spec(pod).get("topologySpreadConstraints", [])}
        assert set(constraints) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        for constraint in constraints.values():
            assert constraint["maxSkew"] == 1, name
            assert workloads_selected_by(docs, constraint["labelSelector"]) == [pod], f"{name}: spreads its own pods"
        if pod["kind"] == "Deployment":
            # Preferred: a small cluster still runs every replica. Each rollout's pods are spread on their own.
            assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in constraints.values()), name
            assert all(c.get("matchLabelKeys") == ["pod-template-hash"] for c in constraints.values()), name
    # NATS: never two servers on one node while another node has none.
    assert {c["topologyKey"]: c["whenUnsatisfiable"] for c in pod_spec(workload(docs, "nats"))["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname": "DoNotSchedule", "topology.kubernetes.io/zone": "ScheduleAnyway"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_workload_needs_a_gpu_operator_label(rendered: Docs, overlay: str) -> None:
    """nvidia.com/gpu.present is set by the GPU Operator's feature discovery only."""
    assert "nvidia.com/gpu.present" not in yaml.safe_dump_all(rendered[overlay])
    gpu_requests = {w["metadata"]["name"] for w in of_kind(rendered[overlay], "Deployment")
                    for c in pod_spec(w)["containers"] if "nvidia.com/gpu" in c["resources"].get("requests", {})}
    assert gpu_requests == ({"triton"} if overlay == "overlays/gpu" else set())


# --- KEDA (k8s/components/keda-worker) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def keda(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The gpu overlay with the component added, as README's "Scale the worker with KEDA" says."""
    root = tools.copy_k8s(tmp_path_factory.mktemp("keda"), FAKE_SECRETS)
    overlay = root / "overlays" / "gpu" / "kustomization.yaml"
    text = overlay.read_text(encoding="utf-8")
    assert "  - ../../components/public-url\n" in text
    overlay.write_text(text.replace("  - ../../components/public-url\n",
                                    "  - ../../components/public-url\n  - ../../components/keda-worker\n"), encoding="utf-8")
    return tools.kustomize(root / "overlays" / "gpu")


@pytest.mark.parametrize("version", tools.KUBERNETES_VERSIONS)
def test_keda_overlay_is_valid_kubernetes_but_for_the_scaled_object(keda: list[dict[str, Any]], version: str) -> None:
    """kubernetes-validate has no schema for KEDA's CRD: every other object is validated strictly; the
    ScaledObject is checked below against what KEDA's scaler reads."""
    failures = []
    for doc in keda:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)


def test_keda_replaces_the_workers_cpu_autoscaler(keda: list[dict[str, Any]], rendered: Docs) -> None:
    (scaled,) = of_kind(keda, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["metadata"]["namespace"] == "mediabot"
    ref = scaled["spec"]["scaleTargetRef"]
    assert one(keda, ref["kind"], ref["name"]) == one(rendered["overlays/gpu"], "Deployment", "worker")
    assert "replicas" not in one(keda, "Deployment", "worker")["spec"], "KEDA's HPA owns the count"
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(keda, "HorizontalPodAutoscaler")}
    assert hpas == {"gateway", "audio", "vision"}, "two autoscalers on the worker would fight"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    # Everything else is the gpu overlay unchanged.
    ignored = {("ScaledObject", "worker"), ("NetworkPolicy", "nats-monitor-from-keda"), ("HorizontalPodAutoscaler", "worker")}
    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]
    assert sorted((d for d in keda if key(d) not in ignored), key=key) == sorted(
        (d for d in rendered["overlays/gpu"] if key(d) not in ignored), key=key)


def test_keda_reads_the_consumer_lag_from_every_nats_server(keda: list[dict[str, Any]]) -> None:
    """In a cluster the scaler asks <server_name>.<endpoint host> for the consumer's leader: the endpoint must be
    the headless Service's name, whose per-pod names are the pod names, which are the server names."""
    (scaled,) = of_kind(keda, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), "trigger metadata is a map of strings"
    assert {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} <= set(metadata)
    assert int(metadata["lagThreshold"]) > 0
    host, _, port = metadata["natsServerMonitoringEndpoint"].rpartition(":")
    name, namespace, *rest = host.split(".")
    assert rest == ["svc", "cluster", "local"] and namespace == "mediabot"
    nats = one(keda, "StatefulSet", "nats")
    assert name == nats["spec"]["serviceName"] and int(port) == container_ports(nats)["monitor"]
    assert _conf(NATS_CONF.read_text(encoding="utf-8"), "server_name") == "$POD_NAME"


def test_only_keda_reaches_the_nats_monitoring_port(keda: list[dict[str, Any]], rendered: Docs) -> None:
    def monitor_sources(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nats = one(docs, "StatefulSet", "nats")
        return [peer for policy in of_kind(docs, "NetworkPolicy")
                if nats in workloads_selected_by(docs, policy["spec"]["podSelector"])
                for rule in policy["spec"].get("ingress", []) if {p["port"] for p in rule["ports"]} & {8222}
                for peer in rule["from"]]

    assert monitor_sources(rendered["overlays/gpu"]) == []
    assert monitor_sources(keda) == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]
