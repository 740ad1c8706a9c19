"""The committed gRPC/protobuf code must be exactly what `make proto` makes from the .proto files.

Editing a .proto without regenerating (or hand-editing generated code) fails here, before it can
become a wire incompatibility between services built from the same commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CONTRACTS = sorted((ROOT / "protos").rglob("*.proto"))


def _generate(include: Path, protos: list[Path], out: Path, grpc: bool) -> None:
    args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}"]
    if grpc:
        args.append(f"--grpc_python_out={out}")
    subprocess.run(args + [str(p) for p in protos], check=True, capture_output=True, text=True)


def _generated_files(root: Path, package: str) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted((root / package).rglob("*"))
        if path.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    }


def test_there_are_contracts_to_check() -> None:
    assert {p.name for p in CONTRACTS} >= {"audio.proto", "vision.proto"}


@pytest.mark.parametrize(
    ("include", "protos", "package", "grpc"),
    [
        (ROOT / "protos", CONTRACTS, "mediabot", True),
        (ROOT, [ROOT / "face_model" / "caffe.proto"], "face_model", False),
    ],
    ids=["mediabot.v1", "caffe"],
)
def test_generated_code_matches_protos(tmp_path: Path, include: Path, protos: list[Path], package: str, grpc: bool) -> None:
    _generate(include, protos, tmp_path, grpc)
    fresh = _generated_files(tmp_path, package)
    committed = _generated_files(ROOT, package)
    assert fresh, "protoc produced nothing"
    assert committed == fresh, "generated code drifted from the .proto files: run `make proto` and commit the result"
