"""Policies over the rendered manifests: resources, probes, hardening, pinned images, secrets, and wiring.

Every check runs on each overlay as Kustomize renders it, so a patch in an overlay cannot undo a policy
unnoticed.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy import tools
from tests.deploy.conftest import OVERLAYS, TARGETS
from tests.deploy.k8s_objects import (
    all_containers,
    container_ports,
    containers,
    dns_target,
    of_kind,
    one,
    pod_spec,
    resolved_env,
    selected_workloads,
    service_target,
    split_address,
    workload as workload_named,
    workloads,
    workloads_selected_by,
)

Docs = dict[str, list[dict[str, Any]]]

# The workloads built from this repository, and their gRPC ports (probed with grpc.health.v1).
OWN_IMAGES = {"gateway": "mediabot/gateway", "worker": "mediabot/gateway", "audio": "mediabot/audio", "vision": "mediabot/vision",
              "triton": "mediabot/triton"}
GRPC_SERVICES = {"audio": 50051, "vision": 50052}
# Each service's Prometheus port (its *_METRICS_PORT); the gateway serves /metrics on its HTTP port.
METRICS_PORTS = {"gateway": 8080, "worker": 9103, "audio": 9101, "vision": 9102, "triton": 8002}
# Containers that serve no port, so no probe could say anything true about them: the minio-init Job runs to
# completion. It must really have no port.
UNPROBED = {("minio-init", "minio-init")}
# ConfigMap keys that are addresses, and the workloads that dial each (the gateway and the worker read the same
# Settings and both call audio, vision, MinIO and NATS).
ADDRESSES = {"AUDIO_SERVICE_ADDR": ("gateway", "worker"), "VISION_SERVICE_ADDR": ("gateway", "worker"),
             "MINIO_ENDPOINT": ("gateway", "worker"), "NATS_URL": ("gateway", "worker"), "TRITON_URL": ("vision",)}


def dialed(docs: list[dict[str, Any]], address: str) -> list[tuple[dict[str, Any], int]]:
    """The workload and container port each server an address names reaches: host:port through a Service,
    nats://host:port[,...] likewise, and dns:///<service>.<namespace>.svc.cluster.local:port straight to the pods
    of a headless Service (gRPC's dns resolver gets their addresses, so no Service port mapping applies)."""
    if address.startswith("dns:///"):
        name, namespace, port = dns_target(address)
        service = one(docs, "Service", name)
        assert service["metadata"]["namespace"] == namespace, f"{address}: the Service is in {service['metadata']['namespace']}"
        assert service["spec"].get("clusterIP") == "None", f"{address}: dns:/// needs a headless Service to see every pod"
        assert not service["spec"].get("publishNotReadyAddresses"), f"{address}: only ready pods may be resolved"
        workload, container_port = service_target(docs, name, port)
        assert container_port == port, f"{address}: a headless Service's clients dial the pod port itself"
        return [(workload, container_port)]
    if address.startswith(("nats://", "tls://")):
        servers = [urlsplit(server) for server in address.split(",")]
        return [service_target(docs, server.hostname or "", server.port or 4222) for server in servers]
    return [service_target(docs, *split_address(address))]


def _quantity(value: str | int) -> float:
    """CPU or memory quantity as a number (cores or bytes), enough to compare requests with limits."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _pyproject_version() -> str:
    text = (tools.REPO / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    assert match
    return match.group(1)


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_requests_and_limits(rendered: Docs, target: str) -> None:
    for workload, container in all_containers(rendered[target]):
        where = f"{workload['metadata']['name']}/{container['name']}"
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request is not None and limit is not None, f"{where}: {resource} request and limit required"
            assert _quantity(request) <= _quantity(limit), f"{where}: {resource} request above its limit"


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_liveness_and_readiness_probes_on_its_own_ports(rendered: Docs, target: str) -> None:
    for workload, container in all_containers(rendered[target]):
        where = f"{workload['metadata']['name']}/{container['name']}"
        ports = set(container_ports(workload).values())
        if (workload["metadata"]["name"], container["name"]) in UNPROBED:
            assert not container.get("ports"), f"{where} has ports: probe them"
            assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container), where
            continue
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                assert kind == "startupProbe", f"{where}: no {kind}"
                continue
            handler = next(key for key in ("httpGet", "grpc", "tcpSocket", "exec") if key in probe)
            assert handler != "exec", f"{where}: {kind} should probe the port, not exec into the container"
            assert probe[handler]["port"] in ports, f"{where}: {kind} probes port {probe[handler]['port']}, not one of {ports}"


@pytest.mark.parametrize("target", TARGETS)
def test_grpc_services_are_ready_by_grpc_health(rendered: Docs, target: str) -> None:
    for name, port in GRPC_SERVICES.items():
        container = containers(one(rendered[target], "Deployment", name))[0]
        assert container["readinessProbe"]["grpc"]["port"] == port
        assert {p["containerPort"] for p in container["ports"]} == {port, METRICS_PORTS[name]}


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_hardened(rendered: Docs, target: str) -> None:
    """The Pod Security "restricted" profile the namespace enforces, plus a read-only root filesystem."""
    for workload in workloads(rendered[target]):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no workload here talks to the API server"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "persistentVolumeClaim", "projected"}, f"{name}: {volume}"
        for container in containers(workload):
            context = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert context.get("privileged") in (None, False), where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("runAsUser", pod["runAsUser"]) != 0, where


def test_namespace_enforces_restricted_pod_security(rendered: Docs) -> None:
    labels = one(rendered["overlays/gpu"], "Namespace", "mediabot")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(rendered: Docs, target: str) -> None:
    version = _pyproject_version()
    for workload, container in all_containers(rendered[target]):
        image = container["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{image}: no tag"
        assert tag != "latest", image
        assert container.get("imagePullPolicy") in (None, "IfNotPresent"), image
        name = workload["metadata"]["name"]
        if name in OWN_IMAGES:
            assert image == f"{OWN_IMAGES[name]}:{version}", f"{image}: the project's images carry pyproject's version {version}"


SECRET_KEYS = {"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
               "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"}
# Referenced with optional: true (Telegram is an optional second channel) and commented out in the template.
OPTIONAL_SECRET_KEYS = {"TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET"}


def _template() -> dict[str, str]:
    keys = {}
    for line in tools.SECRETS_TEMPLATE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            keys[key] = value
    return keys


def test_secret_template_holds_only_placeholders() -> None:
    """No empty defaults (which meant the public development token) and nothing that could pass for a value."""
    from gateway.config import PLACEHOLDER_PREFIX

    keys = _template()
    assert set(keys) == SECRET_KEYS
    assert all(value.startswith(PLACEHOLDER_PREFIX) for value in keys.values()), f"the template must hold placeholders: {keys}"


def test_real_secrets_file_is_ignored_by_git() -> None:
    secrets = tools.K8S / "base" / "secrets.env"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(secrets)], cwd=tools.REPO, check=False)
    assert ignored.returncode == 0, "k8s/base/secrets.env must be gitignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(secrets)], cwd=tools.REPO, capture_output=True, check=False)
    assert tracked.returncode != 0, "k8s/base/secrets.env is committed"


def _run_minio_init(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Job's script with the Job's environment, up to its first mc call (no MinIO here: only its own checks)."""
    return tools.run(["/bin/sh", tools.K8S / "base" / "minio-init" / "minio-init.sh"],
                     env={**env, "MC_CONFIG_DIR": "/nonexistent"})


def test_the_template_applied_unedited_runs_nothing(tmp_path) -> None:  # noqa: ANN001
    """Rendered from the template, the gateway and the worker refuse to start and the minio-init Job fails,
    each naming a placeholder: no pod runs on values anyone can read in this repository."""
    from gateway.config import Settings
    from mediabot.config import ConfigError

    docs = tools.kustomize(tools.copy_k8s(tmp_path) / "overlays" / "gpu")
    for container in [*containers(workload_named(docs, "gateway")), *containers(workload_named(docs, "worker"))]:
        with pytest.raises(ConfigError, match="still holds the template's REPLACE_ME placeholder"):
            Settings.from_env(resolved_env(docs, container))
    (job,) = containers(workload_named(docs, "minio-init"))
    result = _run_minio_init(resolved_env(docs, job))
    assert result.returncode == 1
    assert "still holds the template's REPLACE_ME placeholder" in result.stderr, result.stderr


def test_minio_init_refuses_to_make_the_gateway_user_the_root_user(rendered: Docs) -> None:
    docs = rendered["overlays/gpu"]
    (job,) = containers(workload_named(docs, "minio-init"))
    env = resolved_env(docs, job)
    result = _run_minio_init({**env, "MINIO_ACCESS_KEY": env["MINIO_ROOT_USER"]})
    assert result.returncode == 1 and "not MinIO's root user" in result.stderr, result.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_every_configmap_and_secret_reference_resolves(rendered: Docs, target: str) -> None:
    for _, container in all_containers(rendered[target]):
        resolved_env(rendered[target], container)  # asserts on any dangling name or key


@pytest.mark.parametrize("target", TARGETS)
def test_every_secret_key_is_used(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    refs = [
        item["valueFrom"]["secretKeyRef"]
        for _, container in all_containers(docs)
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    ]
    required = {ref["key"] for ref in refs if not ref.get("optional")}
    optional = {ref["key"] for ref in refs if ref.get("optional")}
    assert set(one(docs, "Secret", "mediabot-secrets")["data"]) == required
    assert optional == OPTIONAL_SECRET_KEYS and not optional & required


def test_the_template_names_the_optional_secrets_commented_out() -> None:
    text = tools.SECRETS_TEMPLATE.read_text(encoding="utf-8")
    for key in OPTIONAL_SECRET_KEYS:
        assert f"\n#{key}=" in text, f"{key}: the template shows it, commented out"


@pytest.mark.parametrize("target", TARGETS)
def test_services_select_one_workload_and_reach_its_ports(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    for service in of_kind(docs, "Service"):
        for port in service["spec"]["ports"]:
            service_target(docs, service["metadata"]["name"], port["port"])


@pytest.mark.parametrize("target", TARGETS)
def test_configured_addresses_reach_the_listening_port(rendered: Docs, target: str) -> None:
    """e.g. AUDIO_SERVICE_ADDR=dns:///audio-headless.mediabot.svc.cluster.local:50051 resolves to audio's pods on
    the port audio listens on, and NATS_URL=nats://nats:4222 is Service nats's client port."""
    docs = rendered[target]
    config = one(docs, "ConfigMap", "mediabot-config")["data"]
    for key, clients in ADDRESSES.items():
        for workload, container_port in dialed(docs, config[key]):
            env = resolved_env(docs, containers(workload)[0])
            listen = {"audio": "AUDIO_LISTEN", "vision": "VISION_LISTEN"}.get(workload["metadata"]["name"])
            if listen:
                assert split_address(env[listen]) == ("0.0.0.0", container_port), f"{key}: {listen}={env[listen]}"
        for client in clients:
            for dialer in containers(workload_named(docs, client)):
                assert key in resolved_env(docs, dialer), f"{client}/{dialer['name']} does not get {key}"


@pytest.mark.parametrize("target", TARGETS)
def test_audio_and_vision_are_dialled_through_headless_services_only(rendered: Docs, target: str) -> None:
    """round_robin over every replica needs every replica's address: no ClusterIP Service may front them."""
    docs = rendered[target]
    config = one(docs, "ConfigMap", "mediabot-config")["data"]
    for key, name in (("AUDIO_SERVICE_ADDR", "audio"), ("VISION_SERVICE_ADDR", "vision")):
        assert config[key].startswith("dns:///"), key
        assert dns_target(config[key])[0] == f"{name}-headless"
        fronting = [s for s in of_kind(docs, "Service") if s["spec"]["selector"] == {"app.kubernetes.io/name": name}]
        assert [s["metadata"]["name"] for s in fronting] == [f"{name}-headless"], f"{name}: {len(fronting)} Services"


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_allow_exactly_the_configured_paths(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "a default deny-all-ingress policy is required"

    allowed: set[tuple[str, str, int]] = set()  # (source, destination workload, port)
    for policy in policies:
        destinations = workloads_selected_by(docs, policy["spec"]["podSelector"])
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                if "podSelector" in peer:
                    sources = [w["metadata"]["name"] for w in selected_workloads(docs, peer["podSelector"]["matchLabels"])]
                    assert sources, f"{policy['metadata']['name']}: selects no pod"
                else:
                    sources = ["ns:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]]
                for destination in destinations:
                    for port in rule["ports"]:
                        assert port["port"] in container_ports(destination).values(), policy["metadata"]["name"]
                        allowed |= {(source, destination["metadata"]["name"], port["port"]) for source in sources}

    config = one(docs, "ConfigMap", "mediabot-config")["data"]
    # The NATS servers' routes among themselves; their monitoring port (8222) is reached by no one here.
    needed = {("ns:ingress-nginx", "gateway", 8080), ("minio-init", "minio", 9000), ("nats", "nats", 6222)}
    needed |= {("ns:monitoring", name, port) for name, port in METRICS_PORTS.items()}
    for key, clients in ADDRESSES.items():
        for workload, port in dialed(docs, config[key]):
            needed |= {(client, workload["metadata"]["name"], port) for client in clients}
    assert allowed == needed


@pytest.mark.parametrize("target", TARGETS)
def test_ingress_serves_only_the_webhooks_at_the_public_url(rendered: Docs, target: str) -> None:
    from gateway.config import TELEGRAM_WEBHOOK_PATH, WEBHOOK_PATH

    docs = rendered[target]
    ingress = one(docs, "Ingress", "gateway")
    public = urlsplit(one(docs, "ConfigMap", "mediabot-config")["data"]["PUBLIC_BASE_URL"])
    assert public.scheme == "https"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == public.hostname
    assert ingress["spec"]["tls"] == [{"hosts": [public.hostname], "secretName": "mediabot-tls"}]
    paths = rule["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [(WEBHOOK_PATH, "Exact"), (TELEGRAM_WEBHOOK_PATH, "Exact")]
    for path in paths:
        backend = path["backend"]["service"]
        named = {p["name"]: p["port"] for p in one(docs, "Service", backend["name"])["spec"]["ports"]}
        workload, port = service_target(docs, backend["name"], named[backend["port"]["name"]])
        assert workload["metadata"]["name"] == "gateway" and port == 8080


@pytest.mark.parametrize("target", TARGETS)
def test_autoscalers_cover_the_stateless_services(rendered: Docs, target: str) -> None:
    """The HPA owns each count: a replicas field beside it would be reset by every `kubectl apply`."""
    docs = rendered[target]
    scaled = {}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        deployment = one(docs, ref["kind"], ref["name"])
        assert ref["kind"] == "Deployment", f"{ref['name']}: only stateless Deployments are autoscaled"
        assert "replicas" not in deployment["spec"], f"{ref['name']} sets replicas while an HPA owns the count"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], ref["name"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"  # needs the CPU requests checked above
        scaled[ref["name"]] = hpa
    assert set(scaled) == {"gateway", "worker", "audio", "vision"}


@pytest.mark.parametrize("target", TARGETS)
def test_metrics_ports_are_announced_for_scraping(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    for name, port in METRICS_PORTS.items():
        workload = workload_named(docs, name)
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(port), name
        assert annotations.get("prometheus.io/path") == "/metrics", name
        assert port in container_ports(workload).values(), f"{name} has no container port {port}"


def test_minio_keeps_its_data_on_a_volume_claim(rendered: Docs) -> None:
    minio = one(rendered["overlays/gpu"], "StatefulSet", "minio")
    (claim,) = minio["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in containers(minio)[0]["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert "/data" in containers(minio)[0]["args"]
    assert one(rendered["overlays/gpu"], "Service", "minio-console")["spec"]["ports"][0]["port"] == 9001


def _triton(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "triton")


@pytest.mark.parametrize("target", ["base", "overlays/gpu"])
def test_gpu_targets_put_triton_on_a_gpu_with_the_gpu_model_config(rendered: Docs, target: str) -> None:
    triton = _triton(rendered[target])
    container = containers(triton)[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert "--model-config-name=gpu" in container["args"]
    spec = pod_spec(triton)
    # The device plugin's resource alone places it: a node label only the GPU Operator sets (nvidia.com/gpu.present)
    # would leave it Pending on GKE, EKS or AKS with their plain device plugin.
    assert "nodeSelector" not in spec and "affinity" not in spec, "no node label may be required for the GPU"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_cpu_overlay_runs_triton_without_any_gpu(rendered: Docs) -> None:
    docs = rendered["overlays/cpu"]
    for _, container in all_containers(docs):
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container["resources"].get(section, {}), container["name"]
    triton = _triton(docs)
    assert not any(arg.startswith("--model-config-name") for arg in containers(triton)[0]["args"])
    assert "nodeSelector" not in pod_spec(triton) and "tolerations" not in pod_spec(triton)


@pytest.mark.parametrize("target", TARGETS)
def test_triton_gets_long_enough_to_load_the_model(rendered: Docs, target: str) -> None:
    container = containers(_triton(rendered[target]))[0]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/dev/shm" in mounts, "the python backend needs shared memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_only_differ_in_triton(rendered: Docs, overlay: str) -> None:
    """Everything but Triton is the base itself, so the overlays cannot drift apart elsewhere."""

    def without_triton(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(
            (d for d in docs if not (d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")),
            key=lambda d: (d["kind"], d["metadata"]["name"]),
        )

    assert without_triton(rendered[overlay]) == without_triton(rendered["base"])


# What the gateway pod's egress must keep out of reach, whatever DNS says: the cluster's and the host's own
# networks, loopback, link-local (the cloud metadata service), carrier-grade NAT; and in IPv6 the spellings of
# IPv4 (::a.b.c.d, ::ffff:a.b.c.d, local-use NAT64), unique-local and link-local addresses.
PRIVATE_V4 = {"0.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8", "100.64.0.0/10"}
PRIVATE_V6 = {"::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10"}


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_egress_is_dns_its_services_and_https_to_public_addresses(rendered: Docs, target: str) -> None:
    import ipaddress

    docs = rendered[target]
    apps = [workload_named(docs, "gateway"), workload_named(docs, "worker")]
    egress = [p for p in of_kind(docs, "NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
    assert len(egress) == 1, "one egress policy, for the gateway and the worker"
    assert sorted(workloads_selected_by(docs, egress[0]["spec"]["podSelector"]), key=lambda w: w["metadata"]["name"]) == apps
    rules = egress[0]["spec"]["egress"]

    allowed_pods: set[tuple[str, int]] = set()
    dns = public = None
    for rule in rules:
        ports = {(port["port"], port.get("protocol", "TCP")) for port in rule["ports"]}
        peers = rule["to"]
        if all("ipBlock" in peer for peer in peers):
            assert public is None and ports == {(443, "TCP")}, "public addresses: HTTPS only"
            public = {ipaddress.ip_network(peer["ipBlock"]["cidr"]).version: peer["ipBlock"] for peer in peers}
        elif any("namespaceSelector" in peer for peer in peers):
            (peer,) = peers
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
            dns = ports
        else:
            for peer in peers:
                (target_workload,) = selected_workloads(docs, peer["podSelector"]["matchLabels"])
                for port, protocol in ports:
                    assert protocol == "TCP" and port in container_ports(target_workload).values()
                    allowed_pods.add((target_workload["metadata"]["name"], port))
    assert dns == {(53, "UDP"), (53, "TCP")}

    config = one(docs, "ConfigMap", "mediabot-config")["data"]
    reached = {
        (workload["metadata"]["name"], port)
        for key, clients in ADDRESSES.items() if "gateway" in clients
        for workload, port in dialed(docs, config[key])
    }
    assert allowed_pods == reached == {("audio", 50051), ("vision", 50052), ("minio", 9000), ("nats", 4222)}

    assert public is not None and set(public) == {4, 6}
    assert public[4]["cidr"] == "0.0.0.0/0" and set(public[4]["except"]) >= PRIVATE_V4
    assert public[6]["cidr"] == "::/0" and set(public[6]["except"]) >= PRIVATE_V6
    for block in public.values():
        whole = ipaddress.ip_network(block["cidr"])
        assert all(ipaddress.ip_network(cidr).subnet_of(whole) for cidr in block["except"])  # the API requires it
    for address in ("169.254.169.254", "10.96.0.1", "127.0.0.1", "::1", "::ffff:10.0.0.1", "fd00::1", "::10.0.0.1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in ipaddress.ip_network(cidr) for cidr in public[ip.version]["except"]), address


@pytest.mark.parametrize("target", TARGETS)
def test_the_gateway_never_gets_minios_root_credentials(rendered: Docs, target: str) -> None:
    """The gateway and worker run as the bucket-limited user the minio-init Job creates; root stays with MinIO."""
    docs = rendered[target]
    root_keys = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    for container in [*containers(workload_named(docs, "gateway")), *containers(workload_named(docs, "worker"))]:
        refs = {item["valueFrom"]["secretKeyRef"]["key"] for item in container["env"] if "secretKeyRef" in item.get("valueFrom", {})}
        assert not refs & root_keys and not {item["name"] for item in container["env"]} & root_keys, container["name"]
        assert refs == {"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY",
                        *OPTIONAL_SECRET_KEYS}
        env = resolved_env(docs, container)
        assert env["MINIO_ACCESS_KEY"] != resolved_env(docs, containers(workload_named(docs, "minio"))[0])["MINIO_ROOT_USER"]
    (minio,) = containers(workload_named(docs, "minio"))
    assert {item["valueFrom"]["secretKeyRef"]["key"] for item in minio["env"]} == root_keys


@pytest.mark.parametrize("target", TARGETS)
def test_minio_init_job_creates_what_the_gateway_uses(rendered: Docs, target: str) -> None:
    docs = rendered[target]
    job = workload_named(docs, "minio-init")
    assert job["kind"] == "Job" and pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    (init,) = containers(job)
    env = resolved_env(docs, init)
    gateway_env = resolved_env(docs, containers(workload_named(docs, "gateway"))[0])
    scheme = "https" if gateway_env["MINIO_SECURE"] == "1" else "http"
    assert env["MINIO_URL"] == f"{scheme}://{gateway_env['MINIO_ENDPOINT']}"
    for key in ("MINIO_BUCKET", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        assert env[key] == gateway_env[key], key
    minio_env = resolved_env(docs, containers(workload_named(docs, "minio"))[0])
    assert (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]) == (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])

    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] in mounts and "configMap" in v)
    script_dir = mounts[volume["name"]]
    assert init["command"] == ["/bin/sh", f"{script_dir}/minio-init.sh"]
    data = one(docs, "ConfigMap", "minio-init")["data"]
    source = tools.K8S / "base" / "minio-init"
    assert data == {name: (source / name).read_text(encoding="utf-8") for name in ("minio-init.sh", "policy.json")}
    assert env["MC_CONFIG_DIR"].startswith(mounts["tmp"])


def test_bucket_policy_allows_the_bucket_and_nothing_else() -> None:
    """What minio_store does (HEAD/list the bucket, get/put/stat/delete objects, multipart uploads, the SDK's
    GetBucketLocation), on arn:aws:s3:::BUCKET and BUCKET/* only: no other bucket, no bucket creation, no admin."""
    import json

    policy = json.loads((tools.K8S / "base" / "minio-init" / "policy.json").read_text(encoding="utf-8"))
    by_resource: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "Principal" not in statement and "NotAction" not in statement
        for resource in statement["Resource"]:
            by_resource.setdefault(resource, set()).update(statement["Action"])
    assert by_resource == {
        # The lifecycle actions: RETENTION_DAYS sets the bucket's expiry rule at start-up (gateway.privacy).
        "arn:aws:s3:::@BUCKET@": {"s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads",
                                 "s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"},
        "arn:aws:s3:::@BUCKET@/*": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                   "s3:ListMultipartUploadParts"},
    }
    assert len(json.dumps(policy)) <= 2048, "mc admin policy create takes at most 2048 characters"
