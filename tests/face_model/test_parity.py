"""The torch port against OpenCV's DNN module running the same prototxt and caffemodel on the same inputs.

The detections are checked on the model exactly as Triton serves it (normalization folded into the
convolutions); the raw head outputs on the layer-for-layer transcription.

Criterion (issue 3): every OpenCV detection with confidence >= 0.3 is matched by one of ours with
|delta confidence| <= 0.01 and IoU >= 0.98, and vice versa. Both sides get the identical blob: the
port's own preprocessing is checked to be bit-identical to cv2.dnn.blobFromImage first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from tests.face_model.images import (
    PARITY_PHOTOS,
    letterbox,
    opencv_blob,
    opencv_detections,
    opencv_net,
    rgb,
    squash,
    unmatched,
)
from tests.face_model.models import TRAINED_600_STEPS, detect, face_ssd, net, reference_files, write_prototxt

MIN_CONFIDENCE = 0.3
MAX_CONFIDENCE_DELTA = 0.01
MIN_IOU = 0.98

CANVASES = {
    "squash300": (300, squash),
    "letterbox300": (300, letterbox),
    "letterbox600": (600, letterbox),
}


@pytest.fixture(scope="module")
def opencv_deploy():
    return opencv_net(reference_files())


@pytest.fixture(scope="module")
def opencv_trained(tmp_path_factory: pytest.TempPathFactory):
    """OpenCV on the prototxt with the trained conv8_2/conv9_2 padding (written by our own variant builder)."""
    path = tmp_path_factory.mktemp("prototxt") / "trained.prototxt"
    path.write_text(text_format.MessageToString(net("trained")), encoding="utf-8")
    return opencv_net(reference_files(), path)


def _assert_parity(ours: np.ndarray, theirs: np.ndarray) -> None:
    kwargs = {"min_confidence": MIN_CONFIDENCE, "max_delta": MAX_CONFIDENCE_DELTA, "min_iou": MIN_IOU}
    assert unmatched(theirs, ours, **kwargs) == [], "OpenCV detections without a match in ours"
    assert unmatched(ours, theirs, **kwargs) == [], "our detections without a match in OpenCV's"


@pytest.mark.parametrize("mean", [(104.0, 117.0, 123.0), (104.0, 177.0, 123.0)])
@pytest.mark.parametrize("name", ["astronaut", "cameraman", "bus"])
def test_preprocessing_is_opencvs_blob_bit_for_bit(name: str, mean: tuple[float, float, float]) -> None:
    canvas = letterbox(rgb(name), 300)
    ours = face_ssd(300, "deploy", mean).preprocess(torch.from_numpy(canvas[None]))
    assert np.array_equal(ours.numpy(), opencv_blob(canvas, mean))


@pytest.mark.parametrize("canvas_kind", sorted(CANVASES))
@pytest.mark.parametrize("name", PARITY_PHOTOS)
def test_detections_match_opencv(name: str, canvas_kind: str, opencv_deploy) -> None:
    size, make_canvas = CANVASES[canvas_kind]
    canvas = make_canvas(rgb(name), size)
    model = face_ssd(size)
    theirs = opencv_detections(opencv_deploy, opencv_blob(canvas, (104.0, 117.0, 123.0)))
    (ours,) = detect(model, [canvas])
    _assert_parity(ours, theirs)


def test_parity_photos_exercise_faces_and_empty_results(opencv_deploy) -> None:
    """Guards the test above against passing vacuously: the set has many confident faces, and negatives with none.

    (Not the cat: the detector scores its face highly, and the deploy prototxt adds off-canvas boxes.)
    """
    confident = {
        name: int((opencv_detections(opencv_deploy, opencv_blob(squash(rgb(name), 300), (104, 117, 123)))[:, 0] >= 0.5).sum())
        for name in PARITY_PHOTOS
    }
    assert sum(confident.values()) >= 10
    assert confident["friends"] >= 3
    assert confident["mask_white"] == 0


@pytest.mark.parametrize("name", ["grace_hopper", "friends", "zidane"])
def test_raw_network_outputs_match_opencv(name: str, opencv_deploy) -> None:
    """The layer-for-layer transcription's heads before DetectionOutput, so a decoding bug cannot hide behind NMS."""
    canvas = squash(rgb(name), 300)
    blob = opencv_blob(canvas, (104.0, 117.0, 123.0))
    opencv_deploy.setInput(blob)
    loc, conf, priors = opencv_deploy.forward(["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])
    model = face_ssd(300, optimized=False)
    with torch.inference_mode():
        blobs = model.run_network(torch.from_numpy(blob), ["mbox_loc", "mbox_conf_flatten"])
    np.testing.assert_allclose(blobs["mbox_loc"].numpy(), loc, rtol=0, atol=2e-4)
    np.testing.assert_allclose(blobs["mbox_conf_flatten"].numpy(), conf, rtol=0, atol=2e-5)
    assert np.array_equal(torch.cat([model.priors.reshape(1, -1), model.variances.reshape(1, -1)]).numpy(), priors[0])


@pytest.mark.parametrize("canvas_kind", ["squash300", "letterbox600"])
@pytest.mark.parametrize("name", ["grace_hopper", "friends", "small_astronaut_on_coffee_8", "chelsea_cat"])
def test_trained_geometry_variant_matches_opencv_on_the_same_prototxt(name: str, canvas_kind: str, opencv_trained) -> None:
    size, make_canvas = CANVASES[canvas_kind]
    canvas = make_canvas(rgb(name), size)
    theirs = opencv_detections(opencv_trained, opencv_blob(canvas, (104.0, 117.0, 123.0)))
    (ours,) = detect(face_ssd(size, "trained"), [canvas])
    _assert_parity(ours, theirs)


@pytest.fixture(scope="module")
def opencv_trained_600_steps(tmp_path_factory: pytest.TempPathFactory):
    """OpenCV on the trained prototxt with conv8_2/conv9_2 steps 75 and 100 written in: what the served
    model (PRIOR_STEPS "canvas") computes on its 600 canvas."""
    path = write_prototxt(tmp_path_factory.mktemp("prototxt") / "trained600.prototxt", "trained", TRAINED_600_STEPS)
    return opencv_net(reference_files(), path)


@pytest.mark.parametrize("name", PARITY_PHOTOS)
def test_canvas_prior_steps_at_600_match_opencv_with_those_steps(name: str, opencv_trained_600_steps) -> None:
    canvas = letterbox(rgb(name), 600)
    theirs = opencv_detections(opencv_trained_600_steps, opencv_blob(canvas, (104.0, 117.0, 123.0)))
    (ours,) = detect(face_ssd(600, "trained", prior_steps="canvas"), [canvas])
    _assert_parity(ours, theirs)
