"""Prior boxes: bit-identical to OpenCV's PriorBox layers, for the 300x300 input and for larger canvases."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from face_model import caffe_pb2
from face_model.caffe_layers import prior_box_count, prior_boxes
from face_model.ssd import adapt_prior_step
from tests.face_model.images import opencv_net
from tests.face_model.models import TRAINED_600_STEPS, face_ssd, net, reference_files, write_prototxt


def _opencv_priors(height: int, width: int, prototxt=None) -> np.ndarray:
    cv_net = opencv_net(reference_files(), prototxt)
    cv_net.setInput(np.zeros((1, 3, height, width), dtype=np.float32))
    return cv_net.forward("mbox_priorbox")[0]


def _ours(canvas: tuple[int, int], variant: str = "deploy", steps: str = "prototxt") -> np.ndarray:
    model = face_ssd(canvas, variant, prior_steps=steps)
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


def test_canvas_steps_at_600_equal_opencvs_priors_with_those_steps_written_in(tmp_path) -> None:
    """At 600 the trained maps are 75/38/19/10/8/6: 8..64 stay (75*8 = 600 ... 10*64 = 640, within a step),
    conv8_2's 100 (8*100 = 800) becomes 600/8 = 75 and conv9_2's 300 (6*300 = 1800) becomes 600/6 = 100."""
    model = face_ssd(600, "trained", prior_steps="canvas")
    assert model.prior_box_steps == {
        "conv4_3_norm_mbox_priorbox": (8.0, 8.0),
        "fc7_mbox_priorbox": (16.0, 16.0),
        "conv6_2_mbox_priorbox": (32.0, 32.0),
        "conv7_2_mbox_priorbox": (64.0, 64.0),
        "conv8_2_mbox_priorbox": None,
        "conv9_2_mbox_priorbox": None,
    }
    prototxt = write_prototxt(tmp_path / "trained600.prototxt", "trained", TRAINED_600_STEPS)
    assert np.array_equal(_ours((600, 600), "trained", "canvas"), _opencv_priors(600, 600, prototxt))
    # ... and that is not what the prototxt's own steps give there.
    assert not np.array_equal(_ours((600, 600), "trained", "canvas"), _ours((600, 600), "trained"))


@pytest.mark.parametrize("variant", ["trained", "deploy"])
def test_canvas_steps_at_300_are_the_prototxts_for_the_trained_geometry(variant: str) -> None:
    """Bit-identical where the steps were made for the maps (trained, 3x3 and 1x1); the deploy prototxt's
    padded 5x5 maps at 300 do not fit 100/300 (500 and 1500 px), so "canvas" moves those priors there."""
    same = np.array_equal(_ours((300, 300), variant, "canvas"), _ours((300, 300), variant))
    assert same == (variant == "trained")


def _centres_px(model) -> np.ndarray:
    """(N, 2) prior centres in canvas pixels, x then y."""
    priors = model.priors.numpy().astype(np.float64)
    height, width = model.canvas_hw
    return np.stack([(priors[:, 0] + priors[:, 2]) / 2 * width, (priors[:, 1] + priors[:, 3]) / 2 * height], axis=1)


# A stride grid's last cell centre may overhang the canvas by up to half a stride (conv6_2 at 300:
# 9.5 * 32 = 304, as in OpenCV), so "on the canvas" allows half the largest stride, 64 / 2.
HALF_CELL = 32.0


@pytest.mark.parametrize("canvas", [(300, 300), (600, 600), (900, 900), (480, 640)])
@pytest.mark.parametrize("variant", ["trained", "deploy"])
def test_canvas_steps_centre_every_prior_on_the_canvas(canvas: tuple[int, int], variant: str) -> None:
    centres = _centres_px(face_ssd(canvas, variant, prior_steps="canvas"))
    height, width = canvas
    assert centres.min() > 0
    assert centres[:, 0].max() <= width + HALF_CELL and centres[:, 1].max() <= height + HALF_CELL


def test_prototxt_steps_put_priors_off_a_600_canvas() -> None:
    """What the canvas mode fixes (and proof the check above can fail): conv8_2 (8x8, step 100) reaches
    750 px and conv9_2 (6x6, step 300) 1650 px on a 600 px canvas."""
    centres = _centres_px(face_ssd(600, "trained"))
    assert centres.max() == pytest.approx(1650)
    off = (centres > 600 + HALF_CELL).any(axis=1)
    # 4 priors per cell; conv8_2: cells in column or row 6, 7 (650, 750 px) of 8; conv9_2 (150, 450, 750 ...):
    # cells in column or row 2..5.
    assert off.sum() == (64 - 36) * 4 + (36 - 4) * 4


def test_adapted_step_rule_by_hand() -> None:
    param = text_format.Parse("min_size: 30 step: 100 offset: 0.5", caffe_pb2.PriorBoxParameter())
    assert adapt_prior_step(param, (3, 3), (300, 300)).step == 100  # 3*100 = 300: a stride
    assert adapt_prior_step(param, (4, 4), (300, 300)).step == 100  # 400 - 300 = one step: still kept
    dropped = adapt_prior_step(param, (8, 8), (600, 600))  # 800 - 600 > 100: canvas / map instead
    assert not dropped.HasField("step") and param.HasField("step")
    assert np.array_equal(prior_boxes(dropped, (8, 8), (600, 600)), prior_boxes(
        text_format.Parse("min_size: 30 step: 75 offset: 0.5", caffe_pb2.PriorBoxParameter()), (8, 8), (600, 600)
    ))
    no_step = text_format.Parse("min_size: 30", caffe_pb2.PriorBoxParameter())
    assert adapt_prior_step(no_step, (8, 8), (600, 600)) == no_step


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
