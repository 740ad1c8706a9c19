"""Prior boxes: bit-identical to OpenCV's PriorBox layers, for the 300x300 input and for larger canvases."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from face_model import caffe_pb2
from face_model.caffe_layers import prior_box_count, prior_boxes
from tests.face_model.images import opencv_net
from tests.face_model.models import face_ssd, net, reference_files


def _opencv_priors(height: int, width: int, prototxt=None) -> np.ndarray:
    cv_net = opencv_net(reference_files(), prototxt)
    cv_net.setInput(np.zeros((1, 3, height, width), dtype=np.float32))
    return cv_net.forward("mbox_priorbox")[0]


def _ours(canvas: tuple[int, int], variant: str = "deploy") -> np.ndarray:
    model = face_ssd(canvas, variant)
    return np.stack([model.priors.reshape(-1).numpy(), model.variances.reshape(-1).numpy()])


@pytest.mark.parametrize("canvas", [(300, 300), (600, 600), (480, 640), (720, 400)])
def test_priors_equal_opencvs_exactly(canvas: tuple[int, int]) -> None:
    theirs = _opencv_priors(*canvas)
    ours = _ours(canvas)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("canvas", [(300, 300), (600, 600)])
def test_trained_geometry_priors_equal_opencvs_on_that_prototxt(canvas: tuple[int, int], tmp_path) -> None:
    prototxt = tmp_path / "trained.prototxt"
    prototxt.write_text(text_format.MessageToString(net("trained")), encoding="utf-8")
    assert np.array_equal(_ours(canvas, "trained"), _opencv_priors(*canvas, prototxt))


def test_prior_counts_follow_the_canvas() -> None:
    """38x38x4 + 19x19x6 + 10x10x6 + 5x5x6 + 5x5x4 + 5x5x4 at 300 (the deploy prototxt keeps conv8_2/conv9_2 at 5x5);
    the trained geometry gives the classic SSD300 8732; doubling the canvas doubles every map."""
    assert face_ssd(300).priors.shape == (8892, 4)
    assert face_ssd(300, "trained").priors.shape == (8732, 4)
    assert face_ssd(600).priors.shape == (75 * 75 * 4 + 38 * 38 * 6 + 19 * 19 * 6 + 10 * 10 * 6 + 10 * 10 * 4 * 2, 4)


def test_prior_box_layer_arithmetic_by_hand() -> None:
    """One cell worked out from Caffe's definition: centre (w + offset) * step, then min, sqrt(min*max), ratios."""
    param = text_format.Parse(
        "min_size: 30 max_size: 60 aspect_ratio: 2 flip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 "
        "step: 8 offset: 0.5",
        caffe_pb2.PriorBoxParameter(),
    )
    assert prior_box_count(param) == 4
    out = prior_boxes(param, (2, 2), (16, 16))
    boxes, variances = out[0].reshape(-1, 4), out[1].reshape(-1, 4)
    centre = 4.0  # (0 + 0.5) * 8
    side = np.sqrt(30 * 60)
    expected_first_cell = [
        [centre - 15, centre - 15, centre + 15, centre + 15],
        [centre - side / 2, centre - side / 2, centre + side / 2, centre + side / 2],
        [centre - 15 * np.sqrt(2), centre - 15 / np.sqrt(2), centre + 15 * np.sqrt(2), centre + 15 / np.sqrt(2)],
        [centre - 15 / np.sqrt(2), centre - 15 * np.sqrt(2), centre + 15 / np.sqrt(2), centre + 15 * np.sqrt(2)],
    ]
    np.testing.assert_allclose(boxes[:4], np.asarray(expected_first_cell) / 16, rtol=1e-6)
    # The second cell in the row moves right by one step; rows come after columns.
    np.testing.assert_allclose(boxes[4] - boxes[0], [0.5, 0, 0.5, 0], atol=1e-6)
    np.testing.assert_allclose(boxes[8] - boxes[0], [0, 0.5, 0, 0.5], atol=1e-6)
    assert np.array_equal(variances, np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (16, 1)))


def test_clip_and_derived_step() -> None:
    """Without an explicit step, Caffe derives it from the image and feature sizes; clip keeps boxes inside [0, 1]."""
    param = text_format.Parse("min_size: 14 clip: true", caffe_pb2.PriorBoxParameter())
    out = prior_boxes(param, (4, 2), (40, 20))  # step 10 both ways
    boxes = out[0].reshape(4, 2, 4)
    np.testing.assert_allclose(boxes[0, 0], [0.0, 0.0, 0.6, 0.3], atol=1e-6)  # centre (5, 5): -2..12, clipped at 0
    np.testing.assert_allclose(boxes[3, 1], [0.4, 0.7, 1.0, 1.0], atol=1e-6)  # centre (15, 35): 8..22, 28..42
    assert np.array_equal(out[1], np.full(32, 0.1, dtype=np.float32))
