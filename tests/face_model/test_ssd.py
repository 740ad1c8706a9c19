"""The torch port's own behaviour: input checks, Caffe layer semantics, DetectionOutput rules, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from face_model import caffe_pb2
from face_model.caffe_layers import CaffeBatchNorm, pooling_output_size
from face_model.caffemodel import parse_prototxt
from face_model.detection_output import DetectionOutputParams, decode_center_size, detection_output
from face_model.ssd import FaceSSD
from tests.face_model.images import letterbox, rgb, squash
from tests.face_model.models import detect, face_ssd, net

PARAMS = DetectionOutputParams(confidence_threshold=0.01, nms_threshold=0.45, top_k=400, keep_top_k=200, foreground_class=1)


def _run_detection(boxes: list[list[float]], scores: list[float], params: DetectionOutputParams = PARAMS):
    """DetectionOutput on explicit corner boxes: priors are the boxes themselves and every offset is zero."""
    priors = torch.tensor(boxes, dtype=torch.float32)
    loc = torch.zeros((1, len(boxes), 4))
    score = torch.tensor(scores, dtype=torch.float32)
    conf = torch.stack([1 - score, score], dim=-1)[None]
    variances = torch.tensor([[0.1, 0.1, 0.2, 0.2]]).expand(len(boxes), 4)
    detections, counts = detection_output(loc, conf, priors, variances, params)
    return detections[0, : int(counts[0])].numpy(), detections[0].numpy(), int(counts[0])


def test_detection_output_params_come_from_the_prototxt() -> None:
    """As Caffe reads them: float32 thresholds (0.01 is 0.0099999998 there too)."""
    assert face_ssd(300).detection_params == DetectionOutputParams(
        confidence_threshold=float(np.float32(0.01)),
        nms_threshold=float(np.float32(0.45)),
        top_k=400,
        keep_top_k=200,
        foreground_class=1,
    )


def test_threshold_is_strict_and_rows_are_sorted_and_zero_padded() -> None:
    boxes = [[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6], [0.2, 0.2, 0.3, 0.3], [0.7, 0.0, 0.8, 0.1]]
    rows, padded, count = _run_detection(boxes, [0.5, 0.9, 0.01, 0.011])
    assert count == 3  # 0.01 is not > 0.01
    np.testing.assert_allclose(rows[:, 0], [0.9, 0.5, 0.011], rtol=1e-6)
    np.testing.assert_allclose(rows[0, 1:], boxes[1], atol=1e-6)
    assert padded.shape == (200, 5) and not padded[count:].any()


def test_nms_drops_overlap_above_threshold_and_keeps_it_at_or_below() -> None:
    base = [0.0, 0.0, 0.4, 0.4]
    heavy = [0.0, 0.0, 0.4, 0.3]  # IoU 0.75 with base: suppressed
    light = [0.0, 0.0, 0.4, 0.18]  # IoU 0.45 with base: kept (Caffe keeps overlap <= threshold)
    rows, _, count = _run_detection([base, heavy, light], [0.9, 0.8, 0.7])
    assert count == 2
    np.testing.assert_allclose(rows[:, 0], [0.9, 0.7], rtol=1e-6)


def test_top_k_limits_candidates_before_nms_and_keep_top_k_after() -> None:
    boxes = [[i * 0.01, 0.0, i * 0.01 + 0.005, 0.005] for i in range(50)]  # disjoint
    scores = [0.5 + i * 0.001 for i in range(50)]
    params = DetectionOutputParams(0.01, 0.45, top_k=30, keep_top_k=20, foreground_class=1)
    rows, padded, count = _run_detection(boxes, scores, params)
    assert count == 20 and padded.shape == (20, 5)
    np.testing.assert_allclose(rows[:, 0], sorted(scores, reverse=True)[:20], rtol=1e-6)
    params = DetectionOutputParams(0.01, 0.45, top_k=10, keep_top_k=20, foreground_class=1)
    assert _run_detection(boxes, scores, params)[2] == 10


def test_decoding_follows_caffes_center_size_with_variances() -> None:
    priors = torch.tensor([[0.2, 0.2, 0.4, 0.6]])  # centre (0.3, 0.4), size 0.2 x 0.4
    variances = torch.tensor([[0.1, 0.1, 0.2, 0.2]])
    loc = torch.tensor([[[1.0, -2.0, 0.5, np.log(2.0) / 0.2]]])
    box = decode_center_size(loc, priors, variances)[0, 0].numpy()
    cx, cy = 0.3 + 0.1 * 1.0 * 0.2, 0.4 + 0.1 * -2.0 * 0.4
    w, h = np.exp(0.2 * 0.5) * 0.2, 2.0 * 0.4
    np.testing.assert_allclose(box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)


def test_an_images_detections_do_not_depend_on_its_batch() -> None:
    canvases = [squash(rgb(name), 300) for name in ("friends", "chelsea_cat", "astronaut", "zidane")]
    model = face_ssd(300)
    alone = [detect(model, [canvas])[0] for canvas in canvases]
    together = detect(model, canvases)
    for single, batched in zip(alone, together):
        assert single.shape == batched.shape
        np.testing.assert_allclose(single, batched, rtol=0, atol=1e-5)


def test_mean_changes_the_input_and_the_result() -> None:
    canvas = letterbox(rgb("grace_hopper"), 300)
    typo = face_ssd(300, "deploy", (104.0, 177.0, 123.0))
    blob = typo.preprocess(torch.from_numpy(canvas[None]))
    assert float(blob[0, 1, 0, 0]) == float(canvas[0, 0, 1]) - 177.0  # green channel, BGR order
    assert not np.array_equal(detect(typo, [canvas])[0], detect(face_ssd(300), [canvas])[0])


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros((1, 300, 300, 3), dtype=torch.float32), "uint8"),
        (torch.zeros((300, 300, 3), dtype=torch.uint8), "uint8 images of shape"),
        (torch.zeros((1, 300, 300, 4), dtype=torch.uint8), "uint8 images of shape"),
        (torch.zeros((1, 600, 600, 3), dtype=torch.uint8), "300x300"),
    ],
)
def test_bad_input_is_refused_with_a_reason(images: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        face_ssd(300)(images)


def test_construction_rejects_bad_canvas_and_mean() -> None:
    with pytest.raises(ValueError, match="too small"):
        FaceSSD(net(), canvas_size=16)
    with pytest.raises(ValueError, match="3 values"):
        FaceSSD(net(), mean_bgr=(1.0, 2.0))


def test_layers_the_port_does_not_implement_fail_loudly() -> None:
    prototxt = net()
    prototxt.layer[3].type = "LRN"  # conv1_h
    with pytest.raises(NotImplementedError, match="LRN"):
        FaceSSD(prototxt)
    prototxt = net()
    detection = next(layer for layer in prototxt.layer if layer.type == "DetectionOutput")
    detection.detection_output_param.num_classes = 3
    with pytest.raises(NotImplementedError, match="num_classes=3"):
        FaceSSD(prototxt)


def test_weights_must_match_the_prototxt() -> None:
    model = FaceSSD(net())
    with pytest.raises(KeyError, match="data_scale"):
        model.load_caffe_weights({"data_bn": [np.zeros(3, np.float32)] * 2 + [np.ones(1, np.float32)]})
    wrong = {name: [np.zeros((1,), np.float32)] for name in model.layers}
    with pytest.raises(ValueError):
        model.load_caffe_weights(wrong)


def test_caffe_batchnorm_divides_by_the_stored_scale_factor() -> None:
    layer = CaffeBatchNorm(2, eps=1e-5)
    layer.load_blobs([np.float32([10, 20]), np.float32([40, 80]), np.float32([10])])
    out = layer(torch.tensor([[[[3.0]], [[6.0]]]]))
    np.testing.assert_allclose(out.flatten().numpy(), [(3 - 1) / np.sqrt(4 + 1e-5), (6 - 2) / np.sqrt(8 + 1e-5)], rtol=1e-6)
    layer.load_blobs([np.float32([10, 20]), np.float32([40, 80]), np.float32([0])])  # factor 0 -> mean 0, var 0
    assert torch.equal(layer.running_mean, torch.zeros(2)) and torch.equal(layer.running_var, torch.zeros(2))


def test_pooling_rounds_up_like_caffe() -> None:
    assert pooling_output_size(150, 3, 2, 0) == 75  # torch's default floor would give 74
    assert pooling_output_size(300, 3, 2, 0) == 150
    assert pooling_output_size(5, 2, 2, 1) == 3  # ceil gives 4, but that window would start in the padding


def test_in_place_layers_modify_the_blob_later_layers_read() -> None:
    """conv4_3_norm reads layer_256_1_bn1 after its in-place Scale and ReLU: negative values must be gone."""
    model = face_ssd(300, optimized=False)
    blob = model.preprocess(torch.from_numpy(squash(rgb("astronaut"), 300)[None]))
    with torch.inference_mode():
        out = model.run_network(blob, ["layer_256_1_bn1", "conv4_3_norm"])
    assert float(out["layer_256_1_bn1"].min()) == 0.0


def test_prototxt_parsing_is_strict() -> None:
    text = 'input: "data" layer { name: "x" type: "ReLU" bottom: "data" top: "data" relu_param { mystery: 1 } }'
    with pytest.raises(text_format.ParseError, match="mystery"):
        parse_prototxt(text)
    assert isinstance(parse_prototxt('input: "data"'), caffe_pb2.NetParameter)


@pytest.mark.parametrize("canvas", [300, 600])
def test_optimized_model_gives_the_faithful_models_detections(canvas: int) -> None:
    faithful, optimized = face_ssd(canvas, optimized=False), face_ssd(canvas)
    for name in ("friends", "zidane", "small_grace_hopper_on_rocket_4", "chelsea_cat"):
        image = letterbox(rgb(name), canvas)
        (a,), (b,) = detect(faithful, [image]), detect(optimized, [image])
        strong_a, strong_b = a[a[:, 0] >= 0.05], b[b[:, 0] >= 0.05]
        assert strong_a.shape == strong_b.shape, name
        np.testing.assert_allclose(strong_a, strong_b, rtol=0, atol=2e-5)


def test_optimization_folds_every_normalization_layer() -> None:
    faithful, optimized = face_ssd(300, optimized=False), face_ssd(300)
    kinds = {type(module).__name__ for module in optimized.layers.values()}
    assert kinds == {"Conv2d", "ChannelAffine", "CaffeNormalize"}
    # 5 Conv->BatchNorm->Scale chains fold into their convolution, 5 BatchNorm->Scale pairs become one affine.
    assert len(faithful.layers) - len(optimized.layers) == 15
    assert optimized.optimize_for_inference() is optimized  # idempotent


@pytest.mark.parametrize("variant", ["trained", "deploy"])
def test_canvas_prior_steps_give_grace_hopper_one_face_on_600(variant: str) -> None:
    """With the prototxt's steps, the 600 canvas doubles the large face (second box at 0.999, shifted by
    conv8_2's misplaced priors); fitted to the canvas, one face remains above the service's 0.75."""
    canvas = letterbox(rgb("grace_hopper"), 600)
    (fitted,) = detect(face_ssd(600, variant, prior_steps="canvas"), [canvas])
    (written,) = detect(face_ssd(600, variant), [canvas])
    assert (fitted[:, 0] >= 0.75).sum() == 1
    assert (written[:, 0] >= 0.75).sum() == 2
    # The one left is the face the prototxt steps also find first (same box within a pixel).
    np.testing.assert_allclose(fitted[0, 1:] * 600, written[0, 1:] * 600, atol=1.0)


def test_prior_steps_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="prior_steps"):
        FaceSSD(net("trained"), canvas_size=600, prior_steps="stretch")
