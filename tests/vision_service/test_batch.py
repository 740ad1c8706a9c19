"""All the views of a photo in one request to the real Triton (TritonDetector.detect_batch), and the pipeline's
choice of views (find_faces with a ViewPolicy) through it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.photo_set import photo
from bench.photo_set import GRACE_HOPPER_FACE
from vision_service.detector import TritonDetector
from vision_service.pipeline import Limits, ViewPolicy, find_faces
from vision_service.views import TILE_OVERLAP, TileGrid, render, upright_views

LIMITS = Limits(max_bytes=16 * 1024 * 1024, max_pixels=50_000_000)


@pytest.fixture(scope="module")
def detector(triton_server):
    client = TritonDetector(triton_server.grpc_url, "face_detector", timeout_s=60)
    client.check()
    yield client
    client.close()


def canvases(name: str) -> np.ndarray:
    with Image.open(io.BytesIO(photo(name).data)) as image:
        rgb = image.convert("RGB")
    views = upright_views(rgb.width, rgb.height, 300, TileGrid(900, TILE_OVERLAP))
    return render(rgb, rgb.width, rgb.height, views, 300)


def test_the_model_says_how_many_canvases_a_request_may_carry(detector) -> None:
    assert detector.info.max_batch_size == 32


def test_one_request_answers_each_canvas_as_if_sent_alone(detector) -> None:
    batch = np.concatenate([canvases("zidane"), canvases("coffee")[:1]])  # 13 views + 1
    together = detector.detect_batch(batch)
    assert len(together) == len(batch) == 14
    for index in (0, 5, 13):
        alone = detector.detect(batch[index])
        assert together[index].count == alone.count
        np.testing.assert_allclose(together[index].rows[: alone.count], alone.rows[: alone.count], atol=1e-3)
    assert together[0].rows[0, 0] > 0.9  # zidane's whole view has a face
    assert together[13].rows[0, 0] < 0.5  # coffee has none


def test_a_batch_over_the_model_limit_is_refused_before_sending(detector) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        detector.detect_batch(np.zeros((33, 300, 300, 3), np.uint8))


def test_a_batch_of_the_wrong_shape_is_refused(detector) -> None:
    with pytest.raises(ValueError):
        detector.detect_batch(np.zeros((2, 600, 600, 3), np.uint8))
    with pytest.raises(ValueError):
        detector.detect_batch(np.zeros((0, 300, 300, 3), np.uint8))


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize("degrees", [90, 270])
def test_the_sideways_views_find_a_turned_portrait_when_the_upright_whole_view_does_not(detector, degrees: int) -> None:
    turned = photo(f"grace_hopper_turned_{degrees}").data
    whole_only = ViewPolicy(tile_long_side=0, sideways=False)
    upright_only = find_faces(turned, detector=detector, limits=LIMITS, policy=whole_only)
    assert upright_only.faces == [] and upright_only.views == 1
    report = find_faces(turned, detector=detector, limits=LIMITS, policy=ViewPolicy(tile_long_side=0))
    assert report.views == 3  # the whole view, then the two turns in a second request
    (face,) = report.faces
    assert face.view == f"sideways {360 - degrees}"
    left, top, right, bottom = GRACE_HOPPER_FACE  # on the upright 512x600 photo
    expected = (top, 512 - right, bottom, 512 - left) if degrees == 90 else (600 - bottom, left, 600 - top, right)
    assert iou((face.left, face.top, face.right, face.bottom), expected) > 0.6


def test_an_upright_face_never_costs_the_sideways_request(detector) -> None:
    report = find_faces(photo("grace_hopper").data, detector=detector, limits=LIMITS, policy=ViewPolicy())
    assert report.views == 10  # the whole view and 3 x 3 tiles of the 512x600 photo at its own size
    assert [f.view for f in report.faces] == ["whole"]
