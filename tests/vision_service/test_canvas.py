"""letterbox and postprocess: the photo onto the model's canvas and the boxes back, as pure functions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vision_service.canvas import Face, letterbox, postprocess


def test_landscape_is_scaled_to_fit_at_the_top_left_with_black_below() -> None:
    image = Image.new("RGB", (1200, 600), (200, 100, 50))
    tensor, scale = letterbox(image, 300)
    assert tensor.shape == (300, 300, 3) and tensor.dtype == np.uint8
    assert scale == 0.25
    assert (tensor[:150] == (200, 100, 50)).all()
    assert (tensor[150:] == 0).all()


def test_portrait_gets_black_on_the_right() -> None:
    tensor, scale = letterbox(Image.new("RGB", (300, 600), (255, 255, 255)), 600)
    assert scale == 1.0
    assert (tensor[:, :300] == 255).all() and (tensor[:, 300:] == 0).all()


def test_small_image_is_scaled_up_to_the_canvas() -> None:
    tensor, scale = letterbox(Image.new("RGB", (100, 50), (9, 9, 9)), 300)
    assert scale == 3.0
    assert (tensor[:150] == 9).all() and (tensor[150:] == 0).all()


def test_channels_stay_rgb() -> None:
    image = Image.new("RGB", (10, 10), (255, 0, 0))
    tensor, _ = letterbox(image, 20)
    assert tuple(tensor[0, 0]) == (255, 0, 0)


def test_letterbox_refuses_non_rgb() -> None:
    with pytest.raises(ValueError):
        letterbox(Image.new("L", (10, 10)), 300)


def rows(*detections: tuple[float, float, float, float, float]) -> np.ndarray:
    table = np.zeros((200, 5), np.float32)
    for i, row in enumerate(detections):
        table[i] = row
    return table


def test_boxes_map_back_to_pixels_of_the_original() -> None:
    # A 1200x600 photo on a 300 canvas: scale 0.25, the photo covers canvas-normalized y in [0, 0.5].
    faces = postprocess(
        rows((0.9, 0.1, 0.1, 0.3, 0.4)), 1, canvas=300, scale=0.25, width=1200, height=600, min_confidence=0.5
    )
    assert faces == [Face(120, 120, 360, 480, pytest.approx(0.9))]


def test_the_same_face_maps_to_the_same_box_on_any_canvas() -> None:
    args = {"width": 1200, "height": 600, "min_confidence": 0.5}
    on_300 = postprocess(rows((0.9, 0.1, 0.1, 0.3, 0.4)), 1, canvas=300, scale=0.25, **args)
    on_600 = postprocess(rows((0.9, 0.1, 0.1, 0.3, 0.4)), 1, canvas=600, scale=0.5, **args)
    assert on_300 == on_600


def test_boxes_are_clipped_to_the_photo_and_empty_ones_dropped() -> None:
    faces = postprocess(
        rows(
            (0.9, -0.05, 0.4, 0.2, 0.7),  # reaches past the left edge and into the padding below
            (0.8, 0.1, 0.6, 0.2, 0.9),  # entirely in the padding
        ),
        2,
        canvas=300,
        scale=0.25,
        width=1200,
        height=600,
        min_confidence=0.5,
    )
    assert faces == [Face(0, 480, 240, 600, pytest.approx(0.9))]


def test_only_the_first_num_rows_count_and_the_threshold_is_inclusive() -> None:
    table = rows((0.5, 0.1, 0.1, 0.2, 0.2), (0.49, 0.3, 0.3, 0.4, 0.4), (0.99, 0.5, 0.5, 0.6, 0.6))
    faces = postprocess(table, 2, canvas=100, scale=1.0, width=100, height=100, min_confidence=0.5)
    assert [f.confidence for f in faces] == [pytest.approx(0.5)]


def test_faces_are_sorted_most_confident_first_and_nan_is_ignored() -> None:
    table = rows(
        (0.6, 0.1, 0.1, 0.2, 0.2), (float("nan"), 0.1, 0.1, 0.2, 0.2), (0.95, 0.3, 0.3, 0.4, 0.4)
    )
    faces = postprocess(table, 3, canvas=100, scale=1.0, width=100, height=100, min_confidence=0.0)
    assert [round(f.confidence, 2) for f in faces] == [0.95, 0.6]


def test_round_trip_through_letterbox_keeps_a_box_in_place() -> None:
    # Draw a bright square at a known place, find it on the canvas, map it back.
    image = Image.new("RGB", (800, 500))
    image.paste((255, 255, 255), (400, 100, 560, 260))
    tensor, scale = letterbox(image, 300)
    ys, xs = np.nonzero(tensor[:, :, 0] > 128)
    row = (1.0, xs.min() / 300, ys.min() / 300, (xs.max() + 1) / 300, (ys.max() + 1) / 300)
    (face,) = postprocess(rows(row), 1, canvas=300, scale=scale, width=800, height=500, min_confidence=0.5)
    assert abs(face.left - 400) <= 3 and abs(face.top - 100) <= 3
    assert abs(face.right - 560) <= 3 and abs(face.bottom - 260) <= 3
