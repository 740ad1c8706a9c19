"""k8s/ renders with Kustomize (as `kubectl apply -k` would) and every object is valid Kubernetes.

Validation uses the OpenAPI-derived JSON schemas in kubernetes-validate, strict (unknown fields are
errors), for each pinned Kubernetes version.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from tests.deploy import tools
from tests.deploy.conftest import FAKE_SECRETS, OVERLAYS, TARGETS
from tests.deploy.k8s_objects import one


def test_pinned_kubernetes_versions_are_known_to_the_validator() -> None:
    known = set(all_versions())
    assert set(tools.KUBERNETES_VERSIONS) <= known, f"kubernetes-validate knows {sorted(known)}"


@pytest.mark.parametrize("target", TARGETS)
def test_target_renders_the_whole_system(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"].rsplit("-", 1)[0] if doc["kind"] in ("ConfigMap", "Secret") else doc["metadata"]["name"]) for doc in rendered[target]}
    expected = {
        ("Namespace", "mediabot"),
        ("ConfigMap", "mediabot-config"),
        ("Secret", "mediabot-secrets"),
        *(("Deployment", name) for name in ("gateway", "worker", "audio", "vision", "triton")),
        ("StatefulSet", "nats"),
        ("ConfigMap", "nats-config"),
        *(("Service", name) for name in ("gateway", "nats", "nats-headless", "audio-headless", "vision-headless", "triton",
                                         "minio", "minio-console")),
        *(("HorizontalPodAutoscaler", name) for name in ("gateway", "worker", "audio", "vision")),
        *(("PodDisruptionBudget", name) for name in ("gateway", "worker", "audio", "vision", "nats")),
        ("StatefulSet", "minio"),
        ("Job", "minio-init"),
        ("ConfigMap", "minio-init"),
        ("Ingress", "gateway"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "app-egress"),
    }
    assert expected <= kinds, f"missing: {sorted(expected - kinds)}"


@pytest.mark.parametrize("version", tools.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_kubernetes(rendered: dict[str, list[dict[str, Any]]], target: str, version: str) -> None:
    failures = []
    for doc in rendered[target]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert not failures, "\n".join(failures)


def test_validator_rejects_a_broken_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Guards the test above against a validator that accepts anything."""
    deployment = copy.deepcopy(one(rendered["overlays/gpu"], "Deployment", "audio"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["tcpSocket"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, tools.KUBERNETES_VERSIONS[0], strict=True)


def test_every_namespaced_object_lands_in_the_mediabot_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target in TARGETS:
        for doc in rendered[target]:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "mediabot", f"{target}: {doc['kind']}/{doc['metadata']['name']}"


def test_rendering_without_secrets_env_fails_with_a_clear_message(tmp_path: Path) -> None:
    """No secrets.env, no deployment: kustomize refuses instead of applying empty credentials."""
    root = tools.copy_k8s(tmp_path)
    (root / "base" / "secrets.env").unlink()
    result = tools.run([tools.kubectl(), "kustomize", root / "overlays" / "gpu"])
    assert result.returncode != 0
    assert "secrets.env" in result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_host_follows_public_base_url(tmp_path: Path, overlay: str) -> None:
    """The overlays set PUBLIC_BASE_URL once; the Ingress rule and its TLS host are derived from it."""
    root = tools.copy_k8s(tmp_path, FAKE_SECRETS)
    kustomization = root / overlay / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    assert "PUBLIC_BASE_URL=https://mediabot.example.com" in text
    kustomization.write_text(text.replace("https://mediabot.example.com", "https://bot.operator.test"), encoding="utf-8")
    docs = tools.kustomize(root / overlay)
    assert one(docs, "ConfigMap", "mediabot-config")["data"]["PUBLIC_BASE_URL"] == "https://bot.operator.test"
    ingress = one(docs, "Ingress", "gateway")
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["bot.operator.test"]
    assert ingress["spec"]["tls"][0]["hosts"] == ["bot.operator.test"]


def test_cpu_overlay_patch_refuses_to_run_on_an_unexpected_base(tmp_path: Path) -> None:
    """The cpu overlay's JSON-patch `test` ops make a moved --model-config-name argument a build error."""
    root = tools.copy_k8s(tmp_path, FAKE_SECRETS)
    triton = root / "base" / "triton.yaml"
    triton.write_text(triton.read_text(encoding="utf-8").replace("- --model-config-name=gpu\n", ""), encoding="utf-8")
    result = tools.run([tools.kubectl(), "kustomize", root / "overlays" / "cpu"])
    assert result.returncode != 0, "the cpu overlay rendered although the argument it removes was gone"


def test_kustomize_is_the_one_kubectl_apply_uses() -> None:
    result = subprocess.run([str(tools.kubectl()), "version", "--client"], capture_output=True, text=True, check=True)
    assert "Kustomize Version: v5" in result.stdout
