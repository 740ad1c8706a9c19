"""What only the MinIO store has, against a real S3 server (SeaweedFS, tests/fixtures/s3.py): the claim object and
its conditional write, metadata headers, start-up (bucket creation by racing replicas, wrong endpoint or
credentials), and the gateway living through the storage going down and coming back.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from minio.error import S3Error

from gateway import replies
from bench.support import installed_program
from gateway.storage import s3_metadata
from gateway.config import Settings
from gateway.storage.s3 import BOOKKEEPING_PREFIX, MinioStore, _put_if_absent, claim_name, overflow_object
from gateway.storage.base import StoreStartupError, StoreUnavailable
from gateway.storage.keys import AUDIO, IMAGES, MediaRef, media_key
from tests.fixtures.gateway import MediaServer, closed_port_addr, free_port, media_form, reply_of, signed_post
from tests.fixtures.s3 import SeaweedS3

SID = "MM" + "0123456789abcdef" * 2
SID2 = "MM" + "fedcba9876543210" * 2
WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
REF = MediaRef("15551234567", AUDIO, SID, 0)
REPO = Path(__file__).resolve().parents[2]


def settings(server: SeaweedS3, bucket: str, **overrides: object) -> Settings:
    return Settings.from_env({key: str(value) for key, value in server.gateway_env(bucket, **overrides).items()})


@pytest.fixture
def store(s3_server: SeaweedS3, s3_bucket: str) -> Iterator[MinioStore]:
    store = MinioStore.connect(settings(s3_server, s3_bucket))
    yield store
    store.close()


def objects(store: MinioStore, prefix: str = "") -> list[str]:
    return sorted(o.object_name or "" for o in store.client.list_objects(store.bucket, prefix=prefix, recursive=True))


# -- metadata ---------------------------------------------------------------------------------------------


def test_metadata_is_ascii_headers_within_2_kb_and_the_rest_beside_the_media(store: MinioStore) -> None:
    faces = [{"box": {"left": i, "top": i, "right": i + 9, "bottom": i + 9}, "confidence": 0.9} for i in range(200)]
    ref = MediaRef("15551234567", IMAGES, SID, 0)
    stored, _ = store.put(
        ref, b"jpeg", content_type="image/jpeg", received_at=WHEN,
        metadata={"profile_name": "José 李", "faces": faces, "message_sid": SID, "original": {"size": 4}},
    )
    stat = store.client.stat_object(store.bucket, stored.key)
    assert stat.content_type == "image/jpeg"
    user = {name.lower(): value for name, value in stat.metadata.items() if name.lower().startswith("x-amz-meta-")}
    assert all(value.isascii() for value in user.values())
    assert s3_metadata.size_of(user) <= 2048
    assert user["x-amz-meta-profile-name"] == '"Jos\\u00e9 \\u674e"'
    assert json.loads(user["x-amz-meta-original"]) == {"size": 4}
    # The faces did not fit: they are in the overflow object the headers name, and read back from it.
    assert "x-amz-meta-faces" not in user
    assert json.loads(user["x-amz-meta-metadata-object"]) == overflow_object(stored.key)
    response = store.client.get_object(store.bucket, overflow_object(stored.key))
    assert json.loads(response.read()) == {"faces": faces}
    response.close()
    assert store.find(ref).metadata["faces"] == faces  # type: ignore[union-attr]


def test_metadata_that_fits_needs_no_second_object(store: MinioStore) -> None:
    stored, _ = store.put(REF, b"RIFF", content_type="audio/wav", received_at=WHEN,
                          metadata={"audio": {"duration_ms": 4120}, "profile_name": "Ada"})
    assert objects(store) == sorted([stored.key, claim_name(REF)])


def test_the_senders_prefix_holds_media_only(store: MinioStore) -> None:
    """What people browse in the MinIO console: their voice notes and photos, no claims or metadata objects."""
    faces = [{"box": {"left": i, "top": i, "right": i + 9, "bottom": i + 9}, "confidence": 0.9} for i in range(200)]
    photo = MediaRef("15551234567", IMAGES, SID, 1)
    audio, _ = store.put(REF, b"RIFF", content_type="audio/wav", received_at=WHEN, metadata={"profile_name": "Ada"})
    image, _ = store.put(photo, b"jpeg", content_type="image/jpeg", received_at=WHEN, metadata={"faces": faces})
    assert objects(store, "whatsapp/") == sorted([audio.key, image.key])
    # The bookkeeping: both claims and the photo's overflow metadata, under the store's own prefix.
    assert objects(store, BOOKKEEPING_PREFIX) == sorted([claim_name(REF), claim_name(photo), overflow_object(image.key)])
    assert all(name.startswith(BOOKKEEPING_PREFIX) for name in (claim_name(REF), overflow_object(image.key)))
    assert store.find(photo).metadata["faces"] == faces  # type: ignore[union-attr]


def test_overflow_metadata_beside_the_media_from_before_the_bookkeeping_prefix_is_still_read(store: MinioStore) -> None:
    """Buckets written by earlier releases keep ``{key}.json`` beside the media; nothing moves it, it still counts."""
    faces = [{"box": {"left": 1, "top": 2, "right": 3, "bottom": 4}, "confidence": 0.9}]
    key = media_key(MediaRef("15551234567", IMAGES, SID, 0), WHEN, "image/jpeg")
    legacy = f"{key}.json"
    headers, overflow = s3_metadata.encode({"profile_name": "Ada", "faces": faces * 100}, legacy)
    assert overflow  # too big for the headers: they name the legacy overflow object
    body = json.dumps(overflow).encode()
    store.client.put_object(store.bucket, legacy, io.BytesIO(body), len(body), content_type="application/json")
    store.client.put_object(store.bucket, key, io.BytesIO(b"jpeg"), 4, content_type="image/jpeg",
                            metadata=headers)  # type: ignore[arg-type]
    [listed] = store.list("15551234567")
    assert listed.key == key and listed.metadata["faces"] == faces * 100


def test_large_objects_go_through_multipart_small_ones_in_one_put(store: MinioStore) -> None:
    big, _ = store.put(MediaRef("15551234567", IMAGES, SID, 0), bytes(16 * 1024 * 1024), content_type="image/jpeg",
                       metadata={"profile_name": "Ada"}, received_at=WHEN)
    small, _ = store.put(REF, b"RIFF", content_type="audio/wav", metadata={}, received_at=WHEN)
    # S3 ETags of multipart uploads end in -<number of parts>: 16 MiB in parts of PART_SIZE (8 MiB).
    big_stat = store.client.stat_object(store.bucket, big.key)
    assert (big_stat.etag or "").endswith("-2")
    assert "-" not in (store.client.stat_object(store.bucket, small.key).etag or "")
    assert s3_metadata.decode(big_stat.metadata)[0]["profile_name"] == "Ada"  # metadata set on multipart too


# -- the claim ------------------------------------------------------------------------------------------------


def test_the_claim_names_the_key_and_cannot_be_created_twice(store: MinioStore) -> None:
    stored, _ = store.put(REF, b"RIFF", content_type="audio/wav", metadata={}, received_at=WHEN)
    response = store.client.get_object(store.bucket, claim_name(REF))
    assert response.read().decode().split("\n")[0] == stored.key
    response.close()
    # What makes a race end in one object: the server refuses a second conditional create.
    with pytest.raises(S3Error) as refused:
        _put_if_absent(store.client, store.bucket, claim_name(REF), b"another key\n")
    assert refused.value.code == "PreconditionFailed"


def claim_as_another_delivery(store: MinioStore, when: datetime) -> str:
    """Create REF's claim as a delivery that arrived at ``when`` would; returns the key it claimed."""
    key = media_key(REF, when, "audio/wav")
    _put_if_absent(store.client, store.bucket, claim_name(REF), f"{key}\nother-delivery\n".encode())
    return key


def test_a_delivery_that_lost_the_claim_waits_for_the_winner(store: MinioStore) -> None:
    key = claim_as_another_delivery(store, WHEN)

    def winner_finishes() -> None:
        time.sleep(0.5)
        store.client.put_object(store.bucket, key, io.BytesIO(b"winner"), 6, content_type="audio/wav")

    thread = threading.Thread(target=winner_finishes)
    thread.start()
    later = WHEN + timedelta(seconds=2)
    stored, created = store.put(REF, b"loser", content_type="audio/wav", metadata={}, received_at=later)
    thread.join()
    assert (stored.key, created) == (key, False)
    assert store.get(key) == b"winner"
    assert objects(store) == sorted([key, claim_name(REF)])


def test_a_claim_whose_writer_died_is_finished_under_the_claimed_key(s3_server: SeaweedS3, s3_bucket: str) -> None:
    store = MinioStore.connect(settings(s3_server, s3_bucket), claim_wait_s=0.5)
    try:
        key = claim_as_another_delivery(store, WHEN)  # and then that gateway died: no media object ever came
        stored, created = store.put(REF, b"replay", content_type="audio/wav", metadata={"n": 2},
                                    received_at=WHEN + timedelta(minutes=1))
        assert (stored.key, created) == (key, True)  # the first delivery's key, not this one's
        assert store.get(key) == b"replay"
        assert objects(store) == sorted([key, claim_name(REF)])
        # And from now on it is simply stored.
        assert store.put(REF, b"again", content_type="audio/wav", metadata={}, received_at=WHEN)[1] is False
    finally:
        store.close()


def test_a_damaged_claim_is_reported_not_overwritten(store: MinioStore) -> None:
    store.client.put_object(store.bucket, claim_name(REF), io.BytesIO(b"../../etc/passwd\n"), 17)
    with pytest.raises(StoreUnavailable, match="delete it"):
        store.put(REF, b"x", content_type="audio/wav", metadata={}, received_at=WHEN)
    with pytest.raises(StoreUnavailable):
        store.find(REF)
    assert objects(store) == [claim_name(REF)]


# -- start-up ---------------------------------------------------------------------------------------------


def test_replicas_starting_together_all_find_the_bucket(s3_server: SeaweedS3, s3_bucket: str) -> None:
    start = threading.Barrier(6)
    outcomes: list[object] = []
    shared = settings(s3_server, s3_bucket)  # the bucket is made here, once, as minio-init does

    def replica() -> None:
        start.wait()
        try:
            store = MinioStore.connect(shared)
        except BaseException as error:  # noqa: BLE001 - reported below
            outcomes.append(error)
            return
        outcomes.append(store.check())
        store.close()

    threads = [threading.Thread(target=replica) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == ["SERVING"] * 6
    client = s3_server.client()
    assert client.bucket_exists(s3_bucket)
    assert list(client.list_objects(s3_bucket, recursive=True)) == []  # the start-up probes cleaned up


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MINIO_SECRET_KEY": "not-the-secret"}, "refused MINIO_SECRET_KEY"),
        ({"MINIO_ACCESS_KEY": "nobody"}, "does not know MINIO_ACCESS_KEY"),
        ({"MINIO_ENDPOINT": closed_port_addr()}, "cannot reach the S3 server"),
        ({"MINIO_SECURE": "1"}, "is MINIO_SECURE right"),
    ],
)
def test_wrong_endpoint_or_credentials_stop_start_up_with_a_clear_message(
    s3_server: SeaweedS3, s3_bucket: str, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(StoreStartupError, match=message):
        MinioStore.connect(settings(s3_server, s3_bucket, **overrides))
    assert list(s3_server.client().list_objects(s3_bucket, recursive=True)) == []


@pytest.mark.parametrize("for_writing", [True, False], ids=["gateway", "browsing"])
def test_a_missing_bucket_stops_start_up_and_is_not_created(
    s3_server: SeaweedS3, s3_bucket: str, for_writing: bool
) -> None:
    """The gateway's MinIO user is limited to its bucket: the deployment creates it (minio-init), never the gateway."""
    with pytest.raises(StoreStartupError, match=r"does not exist \(MINIO_BUCKET\).*minio-init"):
        MinioStore.connect(settings(s3_server, s3_bucket, create_bucket=False), for_writing=for_writing)
    assert not s3_server.client().bucket_exists(s3_bucket)


def test_gunicorn_boots_on_refused_credentials_and_says_so(s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path) -> None:
    """The production entry point: refused credentials no longer stop the gateway (in k8s the minio-init Job may
    create the gateway's user after the gateway starts); the reason is an ERROR line naming the variable, and
    /readyz says ACCESS_DENIED while staying ready, since webhooks are kept in the spool meanwhile."""
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin", "TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "MEDIA_ROOT": str(tmp_path),
        "SPOOL_DIR": str(tmp_path / "spool"), "GATEWAY_PORT": str(port),
        **{key: str(value) for key, value in s3_server.gateway_env(s3_bucket, MINIO_SECRET_KEY="wrong").items()},
    }
    gunicorn = installed_program("gunicorn", "gunicorn")
    process = subprocess.Popen(
        [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "gateway:create_app()"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            assert process.poll() is None, "gunicorn exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:  # noqa: S310
                    body = (response.status, json.loads(response.read()))
            except OSError:
                time.sleep(0.2)
        assert body is not None and body[0] == 200
        assert body[1]["dependencies"]["storage"] == "ACCESS_DENIED"
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "storage refuses the gateway" in output and "refused MINIO_SECRET_KEY" in output
    assert list(s3_server.client().list_objects(s3_bucket, recursive=True)) == []


# -- the gateway while the storage goes down and comes back ---------------------------------------------


def wait_for_storage(client, status: str, timeout_s: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = client.get("/readyz").json["dependencies"]["storage"]
        if seen == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"/readyz storage stayed {seen!r}, expected {status!r}")


@pytest.mark.slow
def test_storage_down_mid_run_then_back(
    make_gateway: Callable[..., Flask], audio_server: str, running_s3: SeaweedS3, s3_bucket: str,
    media_server: MediaServer, voice_note: Path,
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, **running_s3.gateway_env(s3_bucket))
    client = app.test_client()
    store: MinioStore = app.extensions["mediabot"].store
    voice = voice_note.read_bytes()
    url = media_server.add("/media/voice", body=voice, content_type="audio/ogg")
    slow_url = media_server.add("/media/slow-voice", body=voice, content_type="audio/ogg", delay_s=1.5)
    # Spooled, not lost: the reply says so (the background worker is not running in this test).
    couldnt_save = replies.RECEIVED_VOICE

    first = media_form([(url, "audio/ogg")])
    saved = reply_of(signed_post(client, first))
    assert saved.startswith("Saved your voice message (")
    assert client.get("/readyz").json["dependencies"]["storage"] == "SERVING"
    kept = objects(store)

    # Down in the middle of a webhook: the store answered the replay check, then dies during the download.
    during = media_form([(slow_url, "audio/ogg")])
    killer = threading.Timer(0.5, running_s3.kill)
    killer.start()
    try:
        assert reply_of(signed_post(client, during)) == couldnt_save
    finally:
        killer.join()
    assert media_server.routes["/media/slow-voice"].hits == 1  # it got as far as downloading and converting
    # Down before a webhook: the replay check itself fails; nothing is downloaded.
    before = media_form([(url, "audio/ogg")])
    hits = media_server.routes["/media/voice"].hits
    assert reply_of(signed_post(client, before)) == couldnt_save
    assert media_server.routes["/media/voice"].hits == hits
    ready = client.get("/readyz")
    # Still ready: what arrives now is kept by the intake (the spool) and stored when S3 is back.
    assert ready.status_code == 200 and ready.json["dependencies"]["storage"] == "UNAVAILABLE"

    # Back, on the same gateway, without a restart.
    running_s3.start()
    wait_for_storage(client, "SERVING")
    assert objects(store) == kept  # nothing half-written while it was going down
    # The same voice note each time, so the same sentence: saved now, as if it had never failed.
    assert reply_of(signed_post(client, during)) == saved
    assert reply_of(signed_post(client, before)) == saved
    assert reply_of(signed_post(client, first)) == saved  # still the one object, found again
    assert len(store.list("15551234567", AUDIO)) == 3
