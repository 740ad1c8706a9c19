"""docker-compose.yml (and the GPU override) against the Compose Specification and the deployment's rules.

Two validators: the Compose Specification JSON schema on the files as written, and the real
`docker compose config` (the pinned compose release's loader, which also interpolates .env, merges the
override and resolves profiles) for everything else, with checks on the model it prints.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.deploy import tools
from tests.deploy.conftest import COMPOSE_ENV
from tests.deploy.k8s_objects import split_address

Model = dict[str, Any]

OWN_SERVICES = ("gateway", "audio", "vision", "triton")
# host:port each service listens on inside the network, from its own settings.
LISTEN = {"audio": ("AUDIO_LISTEN", 50051), "vision": ("VISION_LISTEN", 50052)}


@pytest.mark.parametrize("path", [tools.COMPOSE_FILE, tools.COMPOSE_GPU_FILE], ids=lambda p: p.name)
def test_file_matches_the_compose_specification_schema(path: Path) -> None:
    validator = jsonschema.Draft7Validator(tools.compose_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))]
    assert not errors, "\n".join(errors)


def test_schema_check_rejects_a_misspelt_key() -> None:
    """Guards the test above against a schema that accepts anything."""
    document = yaml.safe_load(tools.COMPOSE_FILE.read_text(encoding="utf-8"))
    broken = copy.deepcopy(document)
    broken["services"]["gateway"]["healthcheck"]["intervall"] = "5s"
    assert not list(jsonschema.Draft7Validator(tools.compose_schema()).iter_errors(document))
    assert list(jsonschema.Draft7Validator(tools.compose_schema()).iter_errors(broken))


# What compose must be given: there is no development mode in a container (gateway.config refuses the public
# development token unless the gateway is reachable from its own machine only).
REQUIRED = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
            "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")


def test_docker_compose_refuses_to_render_without_any_variable(tmp_path: Path) -> None:
    empty = tmp_path / "env"
    empty.write_text("", encoding="utf-8")
    result = tools.compose_config(empty)
    assert result.returncode != 0
    assert re.search(r"set (\w+) in \.env", result.stderr), result.stderr


@pytest.mark.parametrize("missing", REQUIRED)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_docker_compose_refuses_to_render_without_each_required_value(tmp_path: Path, missing: str, how: str) -> None:
    """Each one on its own: an empty value (`TWILIO_AUTH_TOKEN=` as the old .env.example had) counts as unset."""
    env = {key: value for key, value in COMPOSE_ENV.items() if key != missing}
    if how == "empty":
        env[missing] = ""
    path = tmp_path / "env"
    path.write_text("".join(f"{key}={value}\n" for key, value in env.items()), encoding="utf-8")
    result = tools.compose_config(path, profiles=("ngrok",))
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr, result.stderr


# Services that serve no port and keep no heartbeat, so no healthcheck could say anything true about them.
# Nothing may wait for their health. (The intake worker has its /healthz port now, and is checked.)
UNCHECKED: set[str] = set()
# One-shot services: they exit when done; what depends on them waits for a successful exit, and `up --wait`
# (make up) only returns once a running service has adopted them that way.
ONE_SHOT = {"minio-init"}


def test_one_shot_services_run_once_and_are_waited_for(compose: Model) -> None:
    for name in ONE_SHOT:
        service = compose["services"][name]
        assert service["healthcheck"] == {"disable": True} and service.get("restart") == "no", name
        assert not service.get("ports") and not service.get("expose"), name
        waiting = {other for other, s in compose["services"].items()
                   if s.get("depends_on", {}).get(name, {}).get("condition") == "service_completed_successfully"}
        assert waiting >= {"gateway", "worker"}, f"{name}: the gateway and worker must wait for it"


def test_every_service_has_a_healthcheck(compose: Model) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        if name in ONE_SHOT:
            continue  # checked above
        if name in UNCHECKED:
            assert check == {"disable": True} and not service.get("expose") and not service.get("ports"), name
            assert not any(name in other.get("depends_on", {}) for other in compose["services"].values()), name
            continue
        assert check and not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"


def test_dependencies_wait_for_health(compose: Model) -> None:
    for name, service in compose["services"].items():
        for dependency, condition in service.get("depends_on", {}).items():
            if dependency in ONE_SHOT:
                assert condition["condition"] == "service_completed_successfully", f"{name} -> {dependency}"
                continue
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in compose["services"][dependency]
    assert set(compose["services"]["gateway"]["depends_on"]) == {"nats", "audio", "vision", "minio", "minio-init"}
    assert compose["services"]["worker"]["depends_on"] == compose["services"]["gateway"]["depends_on"]
    assert set(compose["services"]["minio-init"]["depends_on"]) == {"minio"}
    assert set(compose["services"]["vision"]["depends_on"]) == {"triton"}


def test_only_the_gateway_and_the_minio_console_publish_ports(compose: Model) -> None:
    published = {
        name: [(port.get("host_ip"), port["target"]) for port in service.get("ports", [])]
        for name, service in compose["services"].items()
        if service.get("ports")
    }
    assert published == {"gateway": [("127.0.0.1", 8080)], "minio": [("127.0.0.1", 9001)]}


def test_every_service_has_a_memory_limit(compose: Model) -> None:
    for name, service in compose["services"].items():
        assert service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"), name


def test_own_services_run_hardened(compose: Model) -> None:
    for name in (*OWN_SERVICES, "worker", "minio-init", "nats"):
        service = compose["services"][name]
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert any(mount["target"] == "/tmp" and mount["type"] == "tmpfs" for mount in service.get("volumes", [])) or service.get("tmpfs"), name
    for name, service in compose["services"].items():
        assert not service.get("privileged"), name
        assert service.get("cap_drop") == ["ALL"], name


def test_images_are_pinned(compose: Model) -> None:
    version = re.search(r'^version = "([^"]+)"', (tools.REPO / "pyproject.toml").read_text(encoding="utf-8"), re.MULTILINE)
    assert version
    for name, service in compose["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and "/" not in tag and tag != "latest", f"{name}: {service['image']}"
        if name in OWN_SERVICES:
            assert service["image"] == f"mediabot/{name}:{version.group(1)}"
            dockerfile = tools.REPO / service["build"]["dockerfile"]
            assert dockerfile.is_file() and Path(service["build"]["context"]) == tools.REPO


def test_addresses_and_healthchecks_use_the_ports_services_listen_on(compose: Model) -> None:
    services = compose["services"]
    gateway = services["gateway"]["environment"]
    for key, (name, (listen_key, port)) in {"AUDIO_SERVICE_ADDR": ("audio", LISTEN["audio"]), "VISION_SERVICE_ADDR": ("vision", LISTEN["vision"])}.items():
        assert split_address(gateway[key]) == (name, port)
        assert split_address(services[name]["environment"][listen_key]) == ("0.0.0.0", port)
        assert f"'127.0.0.1:{port}'" in " ".join(services[name]["healthcheck"]["test"])
        assert str(port) in services[name]["expose"]
    assert split_address(services["vision"]["environment"]["TRITON_URL"]) == ("triton", 8001)
    assert "8001" in services["triton"]["expose"]
    assert split_address(gateway["MINIO_ENDPOINT"]) == ("minio", 9000)
    assert "9000" in services["minio"]["expose"]
    assert "http://127.0.0.1:8080/readyz" in " ".join(services["gateway"]["healthcheck"]["test"])
    assert urlsplit(gateway["NATS_URL"]).hostname == "nats" and urlsplit(gateway["NATS_URL"]).port == 4222
    assert "4222" in services["nats"]["expose"]
    assert "/v2/health/ready" in " ".join(services["triton"]["healthcheck"]["test"])
    init = services["minio-init"]["environment"]
    assert init["MINIO_URL"] == f"http://{gateway['MINIO_ENDPOINT']}" and gateway["MINIO_SECURE"] == "0"
    assert "minio-init" in {name for name, s in services.items() if "backend" in s["networks"]}


def test_the_gateway_runs_as_the_bucket_limited_user_not_minios_root(compose: Model) -> None:
    """minio-init (as root) creates the user the gateway and worker get; neither is ever handed the root keys."""
    services = compose["services"]
    root = services["minio"]["environment"]
    init = services["minio-init"]["environment"]
    assert (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"]) == (root["MINIO_ROOT_USER"], root["MINIO_ROOT_PASSWORD"])
    for name in ("gateway", "worker"):
        env = services[name]["environment"]
        assert not any(key.startswith("MINIO_ROOT") for key in env), name
        assert root["MINIO_ROOT_USER"] not in env.values() and root["MINIO_ROOT_PASSWORD"] not in env.values(), name
        assert (env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"], env["MINIO_BUCKET"]) == (
            init["MINIO_ACCESS_KEY"], init["MINIO_SECRET_KEY"], init["MINIO_BUCKET"])
    raw = tools.COMPOSE_FILE.read_text(encoding="utf-8")
    shared_block = raw[raw.index("x-app-environment: &app-environment"):raw.index("\nservices:")]
    assert "MINIO_ROOT" not in shared_block


def test_minio_init_runs_the_k8s_jobs_script_and_policy(compose: Model) -> None:
    """One script and one policy for both deployments: compose mounts the files k8s/base's ConfigMap is made of."""
    init = compose["services"]["minio-init"]
    mounted = {config["target"]: Path(compose["configs"][config["source"]]["file"]) for config in init["configs"]}
    assert mounted == {
        "/etc/minio-init/minio-init.sh": tools.K8S / "base" / "minio-init" / "minio-init.sh",
        "/etc/minio-init/policy.json": tools.K8S / "base" / "minio-init" / "policy.json",
    }
    assert init["entrypoint"] == ["/bin/sh", "/etc/minio-init/minio-init.sh"]
    assert init["environment"]["MC_CONFIG_DIR"].startswith("/tmp/")


def test_backend_is_private_and_only_the_gateway_bridges_it(compose: Model) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    members = {name: set(service["networks"]) for name, service in compose["services"].items()}
    assert members["gateway"] == {"edge", "backend"}
    assert members["worker"] == {"edge", "backend"}, "the worker downloads media and calls the services, as the gateway does"
    for name in ("nats", "audio", "vision", "triton", "minio-init"):
        assert members[name] == {"backend"}, name
    assert members["ngrok"] == {"edge"}


def test_ngrok_is_opt_in_and_forwards_to_the_gateway(compose: Model, compose_env_file: Path) -> None:
    ngrok = compose["services"]["ngrok"]
    assert ngrok["profiles"] == ["ngrok"]
    assert ngrok["command"][:2] == ["http", "gateway:8080"]
    assert "NGROK_AUTHTOKEN" in ngrok["environment"]
    default = tools.compose_model(compose_env_file)
    assert "ngrok" not in default["services"]


def test_triton_runs_on_the_cpu_by_default(compose: Model) -> None:
    triton = compose["services"]["triton"]
    assert not any(arg.startswith("--model-config-name") for arg in triton["command"])
    assert "reservations" not in triton["deploy"]["resources"]
    assert triton["shm_size"], "the python backend needs shared memory"


def test_gpu_override_reserves_a_gpu_and_selects_the_gpu_model_config(compose: Model, compose_gpu: Model) -> None:
    triton = compose_gpu["services"]["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert triton["command"] == [*compose["services"]["triton"]["command"], "--model-config-name=gpu"]
    assert triton["healthcheck"] == compose["services"]["triton"]["healthcheck"]


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    """One .env configures the stack, and .env.example is where an operator learns what it may hold."""
    variables = set()
    for path in (tools.COMPOSE_FILE, tools.COMPOSE_GPU_FILE):
        variables |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text(encoding="utf-8")))
    example = tools.REPO / ".env.example"
    assert example.is_file(), ".env.example is missing"
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example.read_text(encoding="utf-8"), re.MULTILINE))
    assert variables - documented == set(), f".env.example does not mention {sorted(variables - documented)}"


def test_make_env_fills_in_minio_and_leaves_twilio_and_the_url_to_the_operator(tmp_path: Path) -> None:
    """`make up` starts from `make .env`: random MinIO secrets for both users, then compose asks for the rest."""
    for name in ("Makefile", ".env.example"):
        (tmp_path / name).write_bytes((tools.REPO / name).read_bytes())
    made = tools.run(["make", "--no-print-directory", ".env"], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    values = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#"))
    assert set(values) == {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert values["MINIO_ACCESS_KEY"] != values["MINIO_ROOT_USER"]
    assert len(values["MINIO_SECRET_KEY"]) == len(values["MINIO_ROOT_PASSWORD"]) == 32
    assert values["MINIO_SECRET_KEY"] != values["MINIO_ROOT_PASSWORD"]
    result = tools.compose_config(tmp_path / ".env")
    assert result.returncode != 0 and re.search(r"set (TWILIO_ACCOUNT_SID|TWILIO_AUTH_TOKEN|PUBLIC_BASE_URL) in \.env", result.stderr)
    with (tmp_path / ".env").open("a", encoding="utf-8") as env:
        env.write("".join(f"{key}={COMPOSE_ENV[key]}\n" for key in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL")))
    assert tools.compose_config(tmp_path / ".env").returncode == 0
