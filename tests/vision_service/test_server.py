"""DetectFaces through the real gRPC server and the real Triton: answers, boxes, every image mode, refusals."""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from mediabot.v1 import vision_pb2
from bench.photo_set import GRACE_HOPPER_FACE, face_photo, no_face_photo, photo
from tests.fixtures.vision import SERVING, health_status, wait_for_health
from tests.vision_service.images import (
    IMAGE_MODES,
    encode,
    exif_rotated_jpeg,
    face_image,
    in_mode,
    png_bomb,
    truncated_jpeg,
)
from vision_service.config import Settings
from vision_service.server import SERVICE_NAME


def detect(stub, data: bytes, content_type: str = "image/jpeg", **fields) -> vision_pb2.DetectFacesResponse:
    return stub.DetectFaces(vision_pb2.DetectFacesRequest(image=data, content_type=content_type, **fields), timeout=30)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def box(face: vision_pb2.Face) -> tuple[int, int, int, int]:
    return (face.box.left, face.box.top, face.box.right, face.box.bottom)


def test_health_is_serving_for_the_server_and_the_service(vision_server: str) -> None:
    # An earlier test (tests/gateway) may have just restarted the session's Triton: health follows it back.
    wait_for_health(vision_server, SERVING, timeout=60)
    assert health_status(vision_server, SERVICE_NAME) == SERVING


def test_reflection_lists_the_service(vision_server: str) -> None:
    with grpc.insecure_channel(vision_server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {service.name for service in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_face_photo_has_a_face_where_the_face_is(vision_stub) -> None:
    reply = detect(vision_stub, face_photo())
    assert reply.has_face
    assert (reply.width, reply.height, reply.format) == (512, 600, "JPEG")
    assert reply.model_name == "face_detector" and reply.model_version
    assert reply.min_confidence == pytest.approx(Settings().face_min_confidence)
    assert len(reply.faces) == 1
    assert reply.faces[0].confidence > 0.9
    assert iou(box(reply.faces[0]), GRACE_HOPPER_FACE) > 0.6


def test_group_photo_finds_every_face(vision_stub) -> None:
    group = photo("friends")
    reply = detect(vision_stub, group.data)
    assert reply.has_face and len(reply.faces) == group.faces
    confidences = [face.confidence for face in reply.faces]
    assert confidences == sorted(confidences, reverse=True)
    for face in reply.faces:
        assert 0 <= face.box.left < face.box.right <= reply.width
        assert 0 <= face.box.top < face.box.bottom <= reply.height


@pytest.mark.parametrize("name", ["coffee", "rocket", "page", "mask_white"])
def test_photos_without_a_face_have_none(vision_stub, name: str) -> None:
    reply = detect(vision_stub, photo(name).data, "image/png")
    assert not reply.has_face and not reply.faces
    assert reply.width > 0 and reply.format in ("PNG", "JPEG")


def test_no_face_helper_is_a_negative(vision_stub) -> None:
    assert not detect(vision_stub, no_face_photo()).has_face


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_gives_boxes_in_upright_coordinates(vision_stub, orientation: int) -> None:
    upright = face_image()
    reference = detect(vision_stub, encode(upright, "JPEG", quality=92))
    rotated = detect(vision_stub, exif_rotated_jpeg(upright, orientation))
    assert (rotated.width, rotated.height) == (reference.width, reference.height) == upright.size
    assert rotated.has_face
    assert iou(box(rotated.faces[0]), box(reference.faces[0])) > 0.9
    assert iou(box(rotated.faces[0]), GRACE_HOPPER_FACE) > 0.6


@pytest.mark.parametrize(
    ("mode", "fmt"),
    IMAGE_MODES,
)
def test_every_image_mode_is_understood(vision_stub, mode: str, fmt: str) -> None:
    data, _ = in_mode(face_image(), mode)
    reply = detect(vision_stub, data, "image/whatever")
    assert reply.format == fmt
    assert (reply.width, reply.height) == (512, 600)
    assert reply.has_face
    assert iou(box(reply.faces[0]), GRACE_HOPPER_FACE) > 0.6


def test_large_phone_photo_boxes_are_in_full_size_pixels(vision_stub) -> None:
    """A 4096x4800 JPEG is decoded at 1/8 (draft) but the boxes must come back in its own pixels."""
    scale = 8
    big = face_image().resize((512 * scale, 600 * scale), Image.Resampling.BICUBIC)
    reply = detect(vision_stub, encode(big, "JPEG", quality=85))
    assert (reply.width, reply.height) == big.size
    assert reply.has_face
    expected = tuple(v * scale for v in GRACE_HOPPER_FACE)
    assert iou(box(reply.faces[0]), expected) > 0.6


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        (b"", "image/jpeg", grpc.StatusCode.INVALID_ARGUMENT),
        (b"Hello! This is a text message, not a photo.\n" * 20, "image/jpeg", grpc.StatusCode.INVALID_ARGUMENT),
        (truncated_jpeg(), "image/jpeg", grpc.StatusCode.INVALID_ARGUMENT),
        (encode(face_image().resize((64, 64)), "TIFF"), "image/tiff", grpc.StatusCode.INVALID_ARGUMENT),
        (png_bomb(), "image/png", grpc.StatusCode.OUT_OF_RANGE),
    ],
    ids=["empty", "text-as-jpeg", "truncated-jpeg", "tiff", "png-bomb"],
)
def test_bad_input_gets_a_clear_status(vision_stub, vision_server: str, data: bytes, content_type: str, code) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        detect(vision_stub, data, content_type)
    assert raised.value.code() == code
    assert raised.value.details()
    assert health_status(vision_server) == SERVING  # and the server is still fine


def test_input_over_the_byte_cap_is_out_of_range(vision_stub) -> None:
    settings = Settings()
    just_over = face_photo() + b"\0" * (settings.max_input_bytes + 1 - len(face_photo()))
    with pytest.raises(grpc.RpcError) as raised:
        detect(vision_stub, just_over)
    assert raised.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "bytes" in raised.value.details()
    # Far over: refused by gRPC's own message limit before the servicer runs (RESOURCE_EXHAUSTED). The gateway
    # never sends that much: its channel has the same limit (mediabot.limits) and its downloads the same cap.
    with pytest.raises(grpc.RpcError) as raised:
        detect(vision_stub, b"\0" * (settings.max_message_bytes + 1))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_min_confidence_override_is_honoured(vision_stub) -> None:
    everything = detect(vision_stub, face_photo(), min_confidence=0.05)
    assert everything.min_confidence == pytest.approx(0.05)
    confidences = [face.confidence for face in everything.faces]
    assert len(confidences) > 1 and min(confidences) >= 0.05
    cut = (confidences[0] + confidences[1]) / 2
    assert len(detect(vision_stub, face_photo(), min_confidence=cut).faces) == 1
    above_all = detect(vision_stub, face_photo(), min_confidence=1.0)
    assert all(face.confidence >= 1.0 for face in above_all.faces)
    assert above_all.min_confidence == 1.0


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_min_confidence_out_of_range_is_invalid(vision_stub, value: float) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        detect(vision_stub, face_photo(), min_confidence=value)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_calls_are_all_answered_correctly(vision_stub) -> None:
    names = ["grace_hopper", "coffee", "friends", "rocket", "astronaut", "page", "zidane", "mask_blue"] * 3
    expected = {name: detect(vision_stub, photo(name).data) for name in set(names)}
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda name: detect(vision_stub, photo(name).data), names))
    for name, reply in zip(names, replies, strict=True):
        alone = expected[name]
        assert reply.has_face == alone.has_face, name
        assert len(reply.faces) == len(alone.faces), name
        for together, single in zip(reply.faces, alone.faces, strict=True):
            # Batched with other images the numbers may differ in the last float bits, not more.
            assert together.confidence == pytest.approx(single.confidence, abs=1e-3)
            assert iou(box(together), box(single)) > 0.98


def test_a_deadline_shorter_than_the_work_is_deadline_exceeded(vision_stub, vision_server: str) -> None:
    big = encode(face_image().resize((4000, 4700)), "PNG", compress_level=1)
    with pytest.raises(grpc.RpcError) as raised:
        vision_stub.DetectFaces(vision_pb2.DetectFacesRequest(image=big), timeout=0.05)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert health_status(vision_server) == SERVING
    assert detect(vision_stub, face_photo()).has_face


def test_every_call_is_logged_with_its_request_id_and_timings(vision_stub, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="vision_service"):
        detect(vision_stub, face_photo(), request_id="SMtest/0")
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "SMtest/0"]
    assert record.format == "JPEG" and record.faces == 1 and record.size == len(face_photo())
    for step in ("decode_ms", "preprocess_ms", "triton_ms", "total_ms"):
        assert getattr(record, step) >= 0


def test_format_is_detected_from_content_not_the_declared_type(vision_stub) -> None:
    png = encode(face_image(), "PNG")
    reply = detect(vision_stub, png, "image/jpeg")
    assert reply.format == "PNG" and reply.has_face
    webp = io.BytesIO()
    face_image().save(webp, "WEBP")
    assert detect(vision_stub, webp.getvalue(), "image/png").format == "WEBP"


# Multi-view detection (views.py, merge.py): each photo class through the real service and Triton.


def test_a_group_of_eight_counts_eight_faces_found_by_the_tiles(vision_stub) -> None:
    group = photo("group_of_eight")
    reply = detect(vision_stub, group.data)
    assert len(reply.faces) == group.faces == 8
    assert reply.views == 9  # the whole photo and 4 x 2 tiles of it at 900x450 px, in one request
    assert any(face.view.startswith("tile 900 ") for face in reply.faces)
    boxes = [box(face) for face in reply.faces]
    assert all(iou(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.parametrize("name", ["grace_hopper", "astronaut", "luispedro", "tom_hanks_112px"])
def test_a_portrait_counts_one_face(vision_stub, name: str) -> None:
    reply = detect(vision_stub, photo(name).data)
    assert len(reply.faces) == 1, [(f.view, f.confidence, box(f)) for f in reply.faces]
    assert reply.faces[0].view == "whole"


def test_a_photo_too_small_for_tiles_gets_one_view(vision_stub) -> None:
    reply = detect(vision_stub, photo("tom_hanks_112px").data, "image/png")
    assert (reply.width, reply.height, reply.views) == (112, 112, 1)
    assert reply.has_face


@pytest.mark.parametrize("name", ["bus", "small_luispedro_on_motorcycle_4"])
def test_small_faces_are_found_in_the_tiles(vision_stub, name: str) -> None:
    small = photo(name)
    reply = detect(vision_stub, small.data)
    assert reply.has_face
    if small.region is not None:
        left, top, right, bottom = small.region
        centres = [((f.box.left + f.box.right) / 2, (f.box.top + f.box.bottom) / 2) for f in reply.faces]
        assert any(left <= x <= right and top <= y <= bottom for x, y in centres)
    assert any(face.view.startswith("tile ") for face in reply.faces)


@pytest.mark.parametrize("degrees", [90, 270])
def test_a_sideways_portrait_is_found_with_its_box_on_the_photo_as_stored(vision_stub, degrees: int) -> None:
    reply = detect(vision_stub, photo(f"grace_hopper_turned_{degrees}").data)
    assert (reply.width, reply.height) == (600, 512)
    assert len(reply.faces) == 1
    (face,) = reply.faces
    # The upright views may already find a sideways face up close (a tile); if not, the sideways views do.
    assert face.view == f"sideways {360 - degrees}" or face.view.startswith("tile "), face.view
    # Grace Hopper's face, turned with the photo: 90° ccw sends (x, y) to (y, 512 - x); 270° to (600 - y, x).
    left, top, right, bottom = GRACE_HOPPER_FACE
    expected = (top, 512 - right, bottom, 512 - left) if degrees == 90 else (600 - bottom, left, 600 - top, right)
    assert iou(box(face), expected) > 0.6


@pytest.mark.parametrize("name", ["chelsea_cat", "coins", "clock_motion", "horse_silhouette", "large_rocket"])
def test_hard_negatives_stay_out_with_every_view(vision_stub, name: str) -> None:
    reply = detect(vision_stub, photo(name).data)
    assert not reply.has_face, [(f.view, f.confidence) for f in reply.faces]
    assert reply.views > 1  # the sideways views were looked at too
