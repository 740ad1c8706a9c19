"""The whole way with STORAGE=minio: simulator -> gateway -> audio service + vision service -> Triton -> SeaweedFS,
then `python -m gateway.media` (a separate process, configured only by its environment) finds both objects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Flask

from gateway.whatsapp.simulate import send
from tests.fixtures.gateway import SENDER, SENDER_ID, TEST_ACCOUNT_SID, TEST_AUTH_TOKEN, WEBHOOK_URL
from bench.photo_set import face_photo
from tests.fixtures.s3 import SeaweedS3

REPO = Path(__file__).resolve().parents[2]


def media_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.media", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_simulated_message_lands_in_s3_and_is_listed(
    make_gateway: Callable[..., Flask], serve_gateway: Callable[[Flask], str], audio_server: str, vision_server: str,
    s3_server: SeaweedS3, s3_bucket: str, voice_note: Path, tmp_path: Path,
) -> None:
    storage_env = {key: str(value) for key, value in s3_server.gateway_env(s3_bucket).items()}
    app = make_gateway(
        AUDIO_SERVICE_ADDR=audio_server, VISION_SERVICE_ADDR=vision_server, VISION_RPC_TIMEOUT_S="10", **storage_env
    )
    base = serve_gateway(app)
    ready = requests.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["dependencies"] == {
        "audio": "SERVING", "vision": "SERVING", "storage": "SERVING", "intake": "SERVING",
    }
    photo = tmp_path / "face.jpg"
    photo.write_bytes(face_photo())

    result = send(
        [voice_note, photo], url=f"{base}/whatsapp", sign_url=WEBHOOK_URL, from_number=SENDER,
        account_sid=TEST_ACCOUNT_SID, auth_token=TEST_AUTH_TOKEN, profile_name="Zoë 李",
    )

    assert result.status == 200, result.body
    voice_reply, photo_reply = result.reply_text.splitlines()
    duration = re.fullmatch(r"1\. Saved your voice message \((\d+\.\d) s\)\.", voice_reply)
    assert duration, voice_reply
    assert photo_reply == "2. Saved your photo (1 face found)."

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "STORAGE"))}, **storage_env}
    listed = media_command(env, "list", "--sender", SENDER_ID)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["KEY", "SIZE", "DETAIL"]
    by_kind = {row.split()[0].split("/")[2]: row.split() for row in rows}
    assert set(by_kind) == {"audio", "images"} and len(rows) == 2
    for kind, ext in (("audio", "wav"), ("images", "jpg")):
        key = by_kind[kind][0]
        assert re.fullmatch(rf"whatsapp/{SENDER_ID}/{kind}/\d{{8}}T\d{{6}}Z_{result.message_sid}_\d\.{ext}", key)
    assert by_kind["audio"][2:4] == [duration.group(1), "s"]
    assert by_kind["images"][2:4] == ["1", "face"]
    assert int(by_kind["images"][1]) == photo.stat().st_size

    # The photo comes back byte for byte; the WAV is the service's 16 kHz mono output.
    out = tmp_path / "back.jpg"
    got = media_command(env, "get", by_kind["images"][0], "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == photo.read_bytes()
    wav = tmp_path / "back.wav"
    assert media_command(env, "get", by_kind["audio"][0], "-o", str(wav)).returncode == 0
    assert wav.read_bytes()[:4] == b"RIFF" and int(by_kind["audio"][1]) == wav.stat().st_size

    # In the bucket itself: the content types, and the profile name decoded from its ASCII header.
    store = app.extensions["mediabot"].store
    assert store.client.stat_object(s3_bucket, by_kind["audio"][0]).content_type == "audio/wav"
    assert store.client.stat_object(s3_bucket, by_kind["images"][0]).content_type == "image/jpeg"
    assert {o.metadata["profile_name"] for o in store.list(SENDER_ID)} == {"Zoë 李"}
    # What the MinIO console shows in the sender's folder: the two media objects and nothing else.
    in_folder = {o.object_name for o in store.client.list_objects(s3_bucket, prefix=f"whatsapp/{SENDER_ID}/", recursive=True)}
    assert in_folder == {by_kind["audio"][0], by_kind["images"][0]}
