"""Photos end to end: the real vision service on a real Triton decides, the gateway keeps only faces.

Photos come from installed registry packages (bench/photo_set.py); Triton and the vision service
are the session's real servers (tests/fixtures/triton.py, tests/fixtures/vision.py).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from PIL import Image

from gateway import replies
from tests.fixtures.gateway import SENDER_ID, MediaServer, media_files, media_form, reply_of, signed_post, stored_files
from bench.photo_set import GRACE_HOPPER_FACE, face_photo, no_face_photo, photo

SAVED_PHOTO = re.compile(r"Saved your photo \((\d+) faces? found\)\.")


@pytest.fixture
def vision_gateway(make_gateway: Callable[..., Flask], audio_server: str, vision_server: str) -> Flask:
    # A generous RPC deadline: these tests check decisions, not speed, on shared CPU cores.
    return make_gateway(AUDIO_SERVICE_ADDR=audio_server, VISION_SERVICE_ADDR=vision_server, VISION_RPC_TIMEOUT_S="10")


def image_files(root: Path, sender: str = SENDER_ID) -> list[Path]:
    return sorted(p for p in (root / "whatsapp" / sender / "images").glob("*") if not p.name.startswith(".")
                  and not p.name.endswith(".json"))


def as_format(data: bytes, fmt: str) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, fmt)
        return out.getvalue()


def test_photo_with_a_face_is_kept_unchanged_with_its_faces(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path
) -> None:
    data = face_photo()
    url = media_server.add("/media/photo", body=data, content_type="image/jpeg")
    form = media_form([(url, "image/jpeg")], ProfileName="Grace")

    text = reply_of(signed_post(vision_gateway.test_client(), form))

    assert text == "Saved your photo (1 face found)."
    (stored,) = image_files(media_root)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z_{form['MessageSid']}_0\.jpg", stored.name)
    assert stored.read_bytes() == data  # the original bytes, not a re-encode
    sidecar = json.loads(stored.with_name(stored.name + ".json").read_text())
    assert sidecar["original"] == {"content_type": "image/jpeg", "size": len(data)}
    assert sidecar["sender_id"] == SENDER_ID
    assert (sidecar["profile_name"], sidecar["message_sid"]) == ("Grace", form["MessageSid"])
    assert sidecar["content_type"] == "image/jpeg"
    assert sidecar["image"] == {"width": 512, "height": 600, "format": "JPEG"}
    assert sidecar["model"]["name"] and sidecar["model"]["version"]
    (face,) = sidecar["faces"]
    assert face["confidence"] >= sidecar["min_confidence"]
    assert face["view"] == "whole" and sidecar["views"] >= 1
    left, top, right, bottom = GRACE_HOPPER_FACE
    box = face["box"]
    # The detector's box overlaps the face drawn by eye.
    overlap_w = min(box["right"], right) - max(box["left"], left)
    overlap_h = min(box["bottom"], bottom) - max(box["top"], top)
    assert overlap_w > 0.5 * (right - left) and overlap_h > 0.5 * (bottom - top)


def test_photo_without_a_face_is_not_kept(vision_gateway: Flask, media_server: MediaServer, media_root: Path) -> None:
    url = media_server.add("/media/photo", body=no_face_photo(), content_type="image/png")
    assert reply_of(signed_post(vision_gateway.test_client(), media_form([(url, "image/png")]))) == replies.NO_FACE
    assert stored_files(media_root) == []


@pytest.mark.parametrize(("fmt", "content_type", "ext"), [("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp")])
def test_png_and_webp_keep_their_format(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path, fmt: str, content_type: str, ext: str
) -> None:
    data = as_format(face_photo(), fmt)
    url = media_server.add("/media/photo", body=data, content_type=content_type)
    assert SAVED_PHOTO.fullmatch(reply_of(signed_post(vision_gateway.test_client(), media_form([(url, content_type)]))))
    (stored,) = image_files(media_root)
    assert stored.suffix == f".{ext}" and stored.read_bytes() == data


def test_the_extension_follows_the_content_not_the_declared_type(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path
) -> None:
    url = media_server.add("/media/photo", body=face_photo(), content_type="image/png")  # really a JPEG
    assert SAVED_PHOTO.fullmatch(reply_of(signed_post(vision_gateway.test_client(), media_form([(url, "image/png")]))))
    (stored,) = image_files(media_root)
    assert stored.suffix == ".jpg"
    assert json.loads(stored.with_name(stored.name + ".json").read_text())["original"]["content_type"] == "image/png"


def test_a_decodable_format_we_do_not_keep_is_refused(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path
) -> None:
    url = media_server.add("/media/photo", body=as_format(face_photo(), "GIF"), content_type="image/jpeg")
    text = reply_of(signed_post(vision_gateway.test_client(), media_form([(url, "image/jpeg")])))
    assert text == replies.PHOTO_FORMAT
    assert stored_files(media_root) == []


def test_several_photos_with_mixed_results_get_one_reply(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path
) -> None:
    media = [
        (media_server.add("/m/0", body=face_photo(), content_type="image/jpeg"), "image/jpeg"),
        (media_server.add("/m/1", body=no_face_photo(), content_type="image/png"), "image/png"),
        (media_server.add("/m/2", body=photo("friends").data, content_type="image/jpeg"), "image/jpeg"),
    ]
    form = media_form(media)
    lines = reply_of(signed_post(vision_gateway.test_client(), form)).split("\n")
    assert lines[0] == "1. Saved your photo (1 face found)."
    assert lines[1] == f"2. {replies.NO_FACE}"
    # The six faces the photo set counts (bench/photo_set.py); duplicates or misses would show here.
    assert lines[2] == f"3. Saved your photo ({photo('friends').faces} faces found)."
    assert [p.name.split("_", 1)[1] for p in image_files(media_root)] == [
        f"{form['MessageSid']}_0.jpg", f"{form['MessageSid']}_2.jpg"
    ]


def test_a_group_a_small_face_and_a_sideways_portrait_are_all_kept_with_each_face_and_its_view(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path
) -> None:
    names = ["group_of_eight", "small_luispedro_on_motorcycle_4", "grace_hopper_turned_90"]
    media = [
        (media_server.add(f"/m/{i}", body=photo(name).data, content_type="image/jpeg"), "image/jpeg")
        for i, name in enumerate(names)
    ]
    lines = reply_of(signed_post(vision_gateway.test_client(), media_form(media))).split("\n")
    assert lines[0] == "1. Saved your photo (8 faces found)."
    assert SAVED_PHOTO.fullmatch(lines[1].removeprefix("2. "))
    assert lines[2] == "3. Saved your photo (1 face found)."
    stored = image_files(media_root)
    assert len(stored) == 3
    sidecars = [json.loads(p.with_name(p.name + ".json").read_text()) for p in stored]
    group = next(s for s in sidecars if s["image"]["width"] == 2400)
    assert len(group["faces"]) == 8 and group["views"] == 9
    assert all(face["view"] == "whole" or face["view"].startswith("tile 900 ") for face in group["faces"])
    turned = next(s for s in sidecars if s["image"]["width"] == 600)
    # Nothing upright (the whole view and 9 tiles), then the photo turned back: 12 canvases in two requests.
    assert (turned["faces"][0]["view"], turned["views"]) == ("sideways 270", 12)


def test_voice_and_photo_in_one_message(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path, voice_note: Path
) -> None:
    media = [
        (media_server.add("/m/0", body=face_photo(), content_type="image/jpeg"), "image/jpeg"),
        (media_server.add("/m/1", body=voice_note.read_bytes(), content_type="audio/ogg"), "audio/ogg"),
    ]
    lines = reply_of(signed_post(vision_gateway.test_client(), media_form(media))).split("\n")
    assert lines[0] == "1. Saved your photo (1 face found)."
    assert re.fullmatch(r"2\. Saved your voice message \(\d+\.\d s\)\.", lines[1])
    assert len(media_files(media_root)) == 4


def test_replayed_photo_keeps_one_file(vision_gateway: Flask, media_server: MediaServer, media_root: Path) -> None:
    url = media_server.add("/media/photo", body=face_photo(), content_type="image/jpeg")
    form = media_form([(url, "image/jpeg")])
    client = vision_gateway.test_client()
    first, second = reply_of(signed_post(client, form)), reply_of(signed_post(client, form))
    assert first == second == "Saved your photo (1 face found)."
    assert len(image_files(media_root)) == 1
    assert len(media_server.requests_for("/media/photo")) == 1


@pytest.mark.parametrize(
    "body",
    [b"this is text, not a photo\n" * 10, b"", face_photo()[:200]],
    ids=["text", "empty", "jpeg-header-only"],
)
def test_bad_photo_gets_a_clear_reply_and_nothing_is_stored(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path, body: bytes
) -> None:
    url = media_server.add("/media/photo", body=body, content_type="image/jpeg")
    text = reply_of(signed_post(vision_gateway.test_client(), media_form([(url, "image/jpeg")])))
    assert text == replies.PHOTO_UNREADABLE
    assert stored_files(media_root) == []


def test_readyz_is_ready_when_both_services_serve(vision_gateway: Flask) -> None:
    response = vision_gateway.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {
        "status": "ready",
        "dependencies": {"audio": "SERVING", "vision": "SERVING", "storage": "SERVING", "intake": "SERVING"},
        "decided_by": "intake",
    }


@pytest.mark.slow
def test_triton_stopped_means_the_photo_is_not_checked_and_not_kept(
    vision_gateway: Flask, media_server: MediaServer, media_root: Path, triton_server_running
) -> None:  # noqa: ANN001 - the fixture's type lives in tests.fixtures.triton
    from tests.fixtures.vision import NOT_SERVING, SERVING, wait_for_health

    vision_addr = vision_gateway.extensions["mediabot"].settings.vision_service_addr
    triton_server_running.stop()
    try:
        url = media_server.add("/media/photo", body=face_photo(), content_type="image/jpeg")
        text = reply_of(signed_post(vision_gateway.test_client(), media_form([(url, "image/jpeg")])))
        assert text == replies.RECEIVED_PHOTO  # spooled: the worker checks it once Triton is back
        assert stored_files(media_root) == []
        wait_for_health(vision_addr, NOT_SERVING, timeout=30)
        response = vision_gateway.test_client().get("/readyz")
        # Reported, and still ready: photos sent now are kept and checked once Triton is back.
        assert response.status_code == 200 and response.json["dependencies"]["vision"] == "NOT_SERVING"
    finally:
        triton_server_running.start()
        # Leave the session's vision service as it was found: serving again, for the tests after this one.
        wait_for_health(vision_addr, SERVING, timeout=120)
