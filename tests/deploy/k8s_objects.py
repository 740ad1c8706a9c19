"""Small queries over rendered Kubernetes objects, so the policy tests read like the policies."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]

# Everything that runs pods: the services, and the minio-init Job that prepares MinIO for the gateway.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Obj], kind: str, name: str) -> Obj:
    """The object of that kind whose name is ``name`` (generated ConfigMaps/Secrets: ``name-<hash>``)."""
    found = [
        doc
        for doc in of_kind(docs, kind)
        if doc["metadata"]["name"] == name
        or (kind in ("ConfigMap", "Secret") and doc["metadata"]["name"].rsplit("-", 1)[0] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(docs: list[Obj], name: str) -> Obj:
    """The Deployment, StatefulSet or Job called ``name``."""
    found = [doc for doc in workloads(docs) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one workload {name}, found {len(found)}"
    return found[0]


def container(workload: Obj, name: str) -> Obj:
    found = [c for c in containers(workload) if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']} has {len(found)} containers named {name}"
    return found[0]


def workloads(docs: list[Obj]) -> list[Obj]:
    return [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def all_containers(docs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for workload in workloads(docs):
        for container in containers(workload):
            yield workload, container


def container_ports(workload: Obj) -> dict[str, int]:
    """name -> containerPort over the workload's containers (unnamed ports keyed by their number)."""
    ports: dict[str, int] = {}
    for container in containers(workload):
        for port in container.get("ports", []):
            ports[port.get("name", str(port["containerPort"]))] = port["containerPort"]
    return ports


def selects(selector: dict[str, str], workload: Obj) -> bool:
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def selected_workloads(docs: list[Obj], selector: dict[str, str]) -> list[Obj]:
    return [workload for workload in workloads(docs) if selects(selector, workload)]


def label_selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions, as NetworkPolicies and PDBs use) against pod labels.
    An empty selector matches nothing here: every selector in these manifests names its pods."""
    match_labels = selector.get("matchLabels", {})
    expressions = selector.get("matchExpressions", [])
    if not match_labels and not expressions:
        return False
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for expression in expressions:
        operator, key, values = expression["operator"], expression["key"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        assert operator in ("In", "NotIn", "Exists", "DoesNotExist"), operator
    return True


def workloads_selected_by(docs: list[Obj], selector: Obj) -> list[Obj]:
    """The workloads whose pods a LabelSelector selects."""
    return [w for w in workloads(docs) if label_selector_matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]


def service_target(docs: list[Obj], service_name: str, port: int) -> tuple[Obj, int]:
    """The one workload behind Service ``service_name`` and the container port its ``port`` reaches."""
    service = one(docs, "Service", service_name)
    matches = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert matches, f"Service {service_name} has no port {port}: {service['spec']['ports']}"
    backends = selected_workloads(docs, service["spec"]["selector"])
    assert len(backends) == 1, f"Service {service_name} selects {len(backends)} workloads"
    workload = backends[0]
    target = matches[0].get("targetPort", port)
    ports = container_ports(workload)
    if isinstance(target, str):
        assert target in ports, f"Service {service_name} targets port name {target!r}, which {workload['metadata']['name']} lacks"
        return workload, ports[target]
    assert target in ports.values(), f"Service {service_name} targets {target}, not a port of {workload['metadata']['name']}"
    return workload, target


def resolved_env(docs: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment as the kubelet would set it, reading the rendered ConfigMaps/Secrets."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = one_by_exact_name(docs, "ConfigMap", ref["name"]).get("data", {})
            assert ref["key"] in data, f"{item['name']}: ConfigMap {ref['name']} has no key {ref['key']}"
            env[item["name"]] = data[ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = one_by_exact_name(docs, "Secret", ref["name"]).get("data", {})
            if ref["key"] not in data and ref.get("optional") is True:
                continue  # the kubelet leaves an optional key that is not there unset (Telegram's, say)
            assert ref["key"] in data, f"{item['name']}: Secret {ref['name']} has no key {ref['key']}"
            env[item["name"]] = base64.b64decode(data[ref["key"]]).decode("utf-8")
        elif "fieldRef" in source:
            # The downward API: known only in the running pod, so it stands here as the field it names.
            env[item["name"]] = f"$({source['fieldRef']['fieldPath']})"
        else:
            raise AssertionError(f"{item['name']}: unsupported valueFrom {source}")
    return env


def one_by_exact_name(docs: list[Obj], kind: str, name: str) -> Obj:
    """Kustomize rewrites references to generated names, so a reference must match a name exactly."""
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"a reference to {kind} {name} resolves to {len(found)} objects"
    return found[0]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    assert host and port.isdigit(), f"{address!r} is not host:port"
    return host, int(port)


def dns_target(target: str) -> tuple[str, str, int]:
    """``dns:///name.namespace.svc.cluster.local:port`` (a gRPC target for its dns resolver) as (name, namespace,
    port): the in-cluster, fully qualified name of a Service."""
    scheme, _, rest = target.partition(":///")
    assert scheme == "dns" and rest, f"{target!r} is not a dns:/// target"
    host, port = split_address(rest)
    name, namespace, svc, cluster, local = host.split(".")
    assert (svc, cluster, local) == ("svc", "cluster", "local"), f"{target!r}: not <service>.<namespace>.svc.cluster.local"
    return name, namespace, port

