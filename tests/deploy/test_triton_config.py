"""deploy_configs.sh, run here on a copy of face_detector/ exactly as the Triton image build runs it, and its
output parsed with Triton's own ModelConfig message: config.pbtxt stays KIND_CPU with the container's
thread count, configs/gpu.pbtxt differs from it in the instance group alone: KIND_GPU, one instance per GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.deploy import tools

SCRIPT = tools.REPO / "model_repository" / "deploy_configs.sh"
MODEL = tools.REPO / "model_repository" / "face_detector"


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "face_detector"
    shutil.copytree(MODEL, target, ignore=shutil.ignore_patterns("*.pt", "*.npz", "__pycache__", "configs"))
    return target


def test_build_writes_a_cpu_and_a_gpu_configuration(tmp_path: Path) -> None:
    model = _copy_model(tmp_path)
    result = tools.run(["sh", SCRIPT, model, "4"])
    assert result.returncode == 0, result.stderr

    original = _parse(MODEL / "config.pbtxt")
    cpu = _parse(model / "config.pbtxt")
    gpu = _parse(model / "configs" / "gpu.pbtxt")
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    # One instance per GPU: count is per device for KIND_GPU, and no gpus list pins it to some of them.
    assert [(g.count, list(g.gpus)) for g in gpu.instance_group] == [(1, [])]
    assert cpu.instance_group[0].count == original.instance_group[0].count
    # 4 CPUs shared by the instances, each single-threaded torch.
    threads = str(4 // original.instance_group[0].count)
    assert cpu.parameters["NUM_THREADS"].string_value == threads

    expected = model_config_pb2.ModelConfig()
    expected.CopyFrom(original)
    expected.parameters["NUM_THREADS"].string_value = threads
    assert cpu == expected, "only NUM_THREADS changes in config.pbtxt"
    gpu.instance_group[0].kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
    gpu.instance_group[0].count = cpu.instance_group[0].count
    assert gpu == cpu, "configs/gpu.pbtxt differs from config.pbtxt in the instance group alone"
    assert gpu.name == "face_detector"


def test_selected_config_name_is_the_one_the_manifests_ask_for() -> None:
    compose_gpu = tools.COMPOSE_GPU_FILE.read_text(encoding="utf-8")
    base = (tools.K8S / "base" / "triton.yaml").read_text(encoding="utf-8")
    assert '"--model-config-name=gpu"' in compose_gpu and "- --model-config-name=gpu" in base
    assert '"$model_dir/configs/gpu.pbtxt"' in SCRIPT.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("kind: KIND_CPU", "kind: KIND_GPU"), "exactly one 'kind: KIND_CPU'"),
        (lambda text: text + '\nparameters {\n  key: "NUM_THREADS"\n  value { string_value: "2" }\n}\n', "NUM_THREADS parameter exactly once"),
        (lambda text: text.replace("count: 2", "count: 0"), "one positive 'count'"),
    ],
    ids=["already-gpu", "threads-set-twice", "no-instances"],
)
def test_build_stops_on_a_config_it_does_not_expect(tmp_path: Path, edit, message: str) -> None:
    model = _copy_model(tmp_path)
    config = model / "config.pbtxt"
    config.write_text(edit(config.read_text(encoding="utf-8")), encoding="utf-8")
    before = config.read_text(encoding="utf-8")
    result = tools.run(["sh", SCRIPT, model, "4"])
    assert result.returncode != 0 and message in result.stderr
    assert config.read_text(encoding="utf-8") == before and not (model / "configs").exists()


@pytest.mark.parametrize("threads", ["0", "four", ""])
def test_build_refuses_a_bad_thread_count(tmp_path: Path, threads: str) -> None:
    model = _copy_model(tmp_path)
    result = tools.run(["sh", SCRIPT, model, threads])
    assert result.returncode != 0 and "CPU_THREADS must be a positive integer" in result.stderr
