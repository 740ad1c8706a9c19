"""``make model``: the artifact is built from the wheel, deterministic, and loads back into the same detector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from face_model.artifact import load_face_ssd
from face_model.build import build_artifact
from tests.face_model.images import letterbox, rgb
from tests.face_model.models import detect, face_ssd

REPO_ROOT = Path(__file__).resolve().parents[2]


def _build(output_dir: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "face_model.build", "--output-dir", str(output_dir)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stderr


def test_two_builds_give_the_same_bytes_and_a_rebuild_writes_nothing(tmp_path: Path) -> None:
    assert "wrote" in _build(tmp_path / "a")
    _build(tmp_path / "b")
    first, second = (tmp_path / "a" / "weights.pt").read_bytes(), (tmp_path / "b" / "weights.pt").read_bytes()
    assert first == second
    before = (tmp_path / "a" / "weights.pt").stat().st_mtime_ns
    assert "up to date" in _build(tmp_path / "a")
    assert (tmp_path / "a" / "weights.pt").stat().st_mtime_ns == before
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["weights.pt"]  # no temporary left behind


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, changed = build_artifact(tmp_path_factory.mktemp("artifact"))
    assert changed
    return path


@pytest.mark.parametrize(
    ("canvas", "variant", "steps"),
    [(300, "deploy", "prototxt"), (600, "deploy", "prototxt"), (300, "trained", "prototxt"), (600, "trained", "canvas")],
)
def test_the_artifact_rebuilds_the_same_detector(artifact: Path, canvas: int, variant: str, steps: str) -> None:
    loaded = load_face_ssd(artifact, canvas_size=canvas, prototxt_variant=variant, prior_steps=steps, optimize=False)
    reference = face_ssd(canvas, variant, prior_steps=steps, optimized=False)
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], reference.state_dict()[k]) for k in reference.state_dict())
    assert torch.equal(loaded.priors, reference.priors)
    image = letterbox(rgb("friends"), canvas)
    assert np.array_equal(detect(loaded, [image])[0], detect(reference, [image])[0])
    served = load_face_ssd(artifact, canvas_size=canvas, prototxt_variant=variant, prior_steps=steps)
    assert served.optimized
    assert np.array_equal(detect(served, [image])[0], detect(face_ssd(canvas, variant, prior_steps=steps), [image])[0])


def test_loading_explains_what_is_wrong(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make model"):
        load_face_ssd(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="deploy"):
        load_face_ssd(artifact, prototxt_variant="tuned")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a face detector artifact"):
        load_face_ssd(tmp_path / "other.pt")
