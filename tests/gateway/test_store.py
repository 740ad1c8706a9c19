"""The stores: key layout, then ONE suite run against both stores (the filesystem, and MinIO on a real S3
server, SeaweedFS, see tests/fixtures/s3.py), then what only the filesystem has (sidecars, symlinks).

Round trips with metadata, content types, listing by sender and kind, idempotent replays (also concurrent),
non-ASCII profile names, a 16 MiB object. MinIO-only behaviour (claims, headers, start-up, storage going
down under the gateway) is in test_minio_store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.storage.s3 import MinioStore
from gateway.storage.base import Store, StoredObject
from gateway.storage.filesystem import FilesystemStore
from gateway.storage.keys import AUDIO, IMAGES, InvalidKey, MediaRef, media_key
from tests.fixtures.gateway import stored_files

SID = "MM" + "0123456789abcdef" * 2
SID2 = "SM" + "fedcba9876543210" * 2
WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def ref(kind: str = AUDIO, sid: str = SID, index: int = 0, sender: str = "15551234567") -> MediaRef:
    return MediaRef(sender, kind, sid, index)


# -- keys -------------------------------------------------------------------------------------------------


def test_audio_key_layout() -> None:
    assert media_key(ref(), WHEN, "audio/wav") == f"whatsapp/15551234567/audio/20250304T050607Z_{SID}_0.wav"


@pytest.mark.parametrize(("content_type", "ext"), [("image/jpeg", "jpg"), ("image/png", "png"), ("image/webp", "webp")])
def test_image_key_layout(content_type: str, ext: str) -> None:
    assert media_key(ref(IMAGES, index=3), WHEN, content_type) == (
        f"whatsapp/15551234567/images/20250304T050607Z_{SID}_3.{ext}"
    )


def test_key_time_is_utc_whatever_the_input_zone() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert media_key(ref(), local, "audio/wav") == media_key(ref(), WHEN, "audio/wav")
    with pytest.raises(ValueError):
        media_key(ref(), WHEN.replace(tzinfo=None), "audio/wav")


@pytest.mark.parametrize(("kind", "content_type"), [(AUDIO, "audio/ogg"), (AUDIO, "image/png"), (IMAGES, "image/gif")])
def test_key_refuses_types_not_stored_under_that_kind(kind: str, content_type: str) -> None:
    with pytest.raises(InvalidKey):
        media_key(ref(kind), WHEN, content_type)


@pytest.mark.parametrize(
    "bad",
    [
        {"sender": "../etc"}, {"sender": ".."}, {"sender": "1/2"}, {"sender": ""}, {"sender": ".hidden"},
        {"sender": "a" * 65}, {"kind": "video"}, {"kind": "../audio"}, {"sid": "MM../../x"}, {"sid": "XX" + "0" * 32},
        {"index": -1}, {"index": 10},
    ],
)
def test_refs_that_could_escape_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidKey):
        ref(**bad)  # type: ignore[arg-type]


# -- one suite, both stores ------------------------------------------------------------------------------


def raw_names(store: Store) -> list[str]:
    """Everything the store holds, its bookkeeping included: files under the root, or objects in the bucket."""
    if isinstance(store, FilesystemStore):
        return [str(p) for p in stored_files(store.root)]
    assert isinstance(store, MinioStore)
    return sorted(o.object_name for o in store.client.list_objects(store.bucket, recursive=True) if o.object_name)


def put(store: Store, r: MediaRef, data: bytes, content_type: str = "audio/wav", when: datetime = WHEN,
        **metadata: object) -> tuple[StoredObject, bool]:
    return store.put(r, data, content_type=content_type, metadata=metadata, received_at=when)


def test_round_trip_with_metadata(each_store: Store) -> None:
    metadata = {
        "message_sid": SID, "media_index": 0, "sender_id": "15551234567", "profile_name": "Grace",
        "received_at": "2025-03-04T05:06:07Z", "original": {"content_type": "audio/ogg", "size": 4321},
        "source": {"format": "ogg", "codec": "opus"},
        "audio": {"duration_ms": 4120, "sample_rate_hz": 16000, "channels": 1, "bits_per_sample": 16},
    }
    stored, created = each_store.put(ref(), b"RIFF....", content_type="audio/wav", metadata=metadata, received_at=WHEN)
    assert created
    assert stored.key == f"whatsapp/15551234567/audio/20250304T050607Z_{SID}_0.wav"
    assert (stored.content_type, stored.size) == ("audio/wav", 8)
    assert {**stored.metadata} == {
        **metadata, "key": stored.key, "content_type": "audio/wav", "size": 8,
        "sha256": hashlib.sha256(b"RIFF....").hexdigest(), "stored_at": stored.metadata["stored_at"],
    }
    assert each_store.get(stored.key) == b"RIFF...."
    assert each_store.find(ref()) == stored  # every field read back with its type
    assert each_store.list("15551234567") == [stored]
    assert each_store.find(ref(index=1)) is None


@pytest.mark.parametrize(
    ("kind", "content_type", "ext"),
    [(AUDIO, "audio/wav", "wav"), (IMAGES, "image/jpeg", "jpg"), (IMAGES, "image/png", "png"),
     (IMAGES, "image/webp", "webp")],
)
def test_content_types_are_kept(each_store: Store, kind: str, content_type: str, ext: str) -> None:
    stored, _ = put(each_store, ref(kind), b"bytes", content_type)
    assert stored.key.endswith(f".{ext}")
    (listed,) = each_store.list("15551234567", kind)
    assert listed.content_type == content_type
    assert each_store.find(ref(kind)).content_type == content_type  # type: ignore[union-attr]


def test_a_replay_with_a_later_time_finds_the_first_object(each_store: Store) -> None:
    first, created = put(each_store, ref(), b"one")
    again, created_again = put(each_store, ref(), b"two", when=WHEN + timedelta(seconds=30))
    assert created and not created_again
    assert again == first
    assert each_store.get(first.key) == b"one"
    assert len(each_store.list("15551234567")) == 1


def test_other_indexes_kinds_and_messages_are_separate_objects(each_store: Store) -> None:
    refs = [(ref(), "audio/wav"), (ref(index=1), "audio/wav"), (ref(IMAGES), "image/png"), (ref(sid=SID2), "audio/wav")]
    for r, ct in refs:
        assert put(each_store, r, b"x", ct)[1]
    assert len(each_store.list("15551234567")) == 4
    assert len(each_store.list("15551234567", AUDIO)) == 3
    images = each_store.list("15551234567", IMAGES)
    assert [o.key.rsplit("/", 1)[1] for o in images] == [f"20250304T050607Z_{SID}_0.png"]


def test_list_by_sender_and_all_senders(each_store: Store) -> None:
    put(each_store, ref(sender="15551234567"), b"a")
    put(each_store, ref(IMAGES, sender="4915123456789"), b"b", "image/jpeg")
    assert each_store.senders() == ["15551234567", "4915123456789"]
    assert [o.key.split("/")[1] for o in each_store.list("4915123456789")] == ["4915123456789"]
    assert each_store.list("4915123456789", AUDIO) == []
    assert each_store.list("15550000000") == []
    with pytest.raises(InvalidKey):
        each_store.list("15551234567", "video")


def test_concurrent_puts_of_one_ref_store_one_object(each_store: Store) -> None:
    start = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver(n: int) -> None:
        start.wait()
        try:
            stored, created = put(each_store, ref(), f"copy {n}".encode(), when=WHEN + timedelta(seconds=n))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            return
        with lock:
            results.append((stored.key, created))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(created for _, created in results) == 1
    ((key,),) = [{key for key, _ in results}]
    (listed,) = each_store.list("15551234567")
    assert listed.key == key
    # The one object and its bookkeeping, nothing else: on disk a pointer file and a sidecar beside the media,
    # in the bucket one claim object under the store's own prefix.
    if isinstance(each_store, FilesystemStore):
        expected = {key, key + ".json", f"whatsapp/15551234567/audio/.{SID}_0.ref"}
    else:
        expected = {key, f".mediabot/claims/whatsapp/15551234567/audio/{SID}_0"}
    assert set(raw_names(each_store)) == expected


def test_list_is_newest_first(each_store: Store) -> None:
    for n, sid in enumerate([SID, SID2, "MM" + "ab" * 16]):
        put(each_store, ref(sid=sid), b"x", when=WHEN + timedelta(minutes=n))
    put(each_store, ref(IMAGES, sid=SID2), b"x", "image/png", when=WHEN + timedelta(minutes=5))
    keys = [o.key.rsplit("/", 1)[1] for o in each_store.list("15551234567")]
    assert keys == sorted(keys, reverse=True)
    assert keys[0] == f"20250304T051107Z_{SID2}_0.png"
    assert keys[1].endswith(f"_MM{'ab' * 16}_0.wav")


@pytest.mark.parametrize(
    "name",
    [
        "José Müller", "李小龍", "Zoë 😀🎉", "  spaced  out  ", 'quotes " and \\ backslash', "tab\tnew\nline\x7f",
        "=?utf-8?b?w6k=?=", "123", "", "x" * 300,
    ],
)
def test_profile_names_come_back_exactly(each_store: Store, name: str) -> None:
    stored, _ = put(each_store, ref(), b"x", profile_name=name, sender_id="15551234567")
    found = each_store.find(ref())
    assert found is not None and found.metadata["profile_name"] == name
    assert each_store.list("15551234567")[0].metadata["profile_name"] == name
    assert stored.metadata["profile_name"] == name


def test_a_crowd_photo_keeps_every_face(each_store: Store) -> None:
    """200 faces (the detector's maximum) do not fit S3's 2 KB of metadata: none may be lost."""
    faces = [{"box": {"left": i, "top": 2 * i, "right": i + 40, "bottom": 2 * i + 50}, "confidence": 0.5 + i / 1000}
             for i in range(200)]
    stored, _ = put(each_store, ref(IMAGES), b"jpeg", "image/jpeg", faces=faces, profile_name="Ada", media_index=0)
    found = each_store.find(ref(IMAGES))
    assert found == stored
    assert found is not None and found.metadata["faces"] == faces
    assert each_store.list("15551234567", IMAGES)[0].metadata["faces"] == faces


def test_a_16_mib_object(each_store: Store) -> None:
    data = os.urandom(16 * 1024 * 1024)
    stored, created = put(each_store, ref(IMAGES), data, "image/jpeg")
    assert created and stored.size == len(data)
    assert each_store.get(stored.key) == data
    assert each_store.find(ref(IMAGES)).size == len(data)  # type: ignore[union-attr]


def test_get_of_a_missing_key_is_a_key_error(each_store: Store) -> None:
    with pytest.raises(KeyError):
        each_store.get(f"whatsapp/15551234567/audio/20250304T050607Z_{SID}_0.wav")


def test_get_refuses_keys_outside_the_layout(each_store: Store) -> None:
    for key in ["../secret", "whatsapp/../../secret", "/etc/passwd", f"whatsapp/1555/audio/x_{SID}_0.wav",
                f"whatsapp/15551234567/audio/.{SID}_0.ref", f".mediabot/claims/whatsapp/15551234567/audio/{SID}_0"]:
        with pytest.raises(InvalidKey):
            each_store.get(key)
    with pytest.raises(InvalidKey):
        each_store.list("../..")


def test_a_ready_store_says_so(each_store: Store) -> None:
    assert each_store.check() == "SERVING"


# -- only the filesystem ------------------------------------------------------------------------------------


def test_put_writes_data_and_sidecar(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    stored, created = store.put(
        ref(), b"RIFF....", content_type="audio/wav", metadata={"message_sid": SID}, received_at=WHEN
    )
    assert created
    path = tmp_path / stored.key
    assert path.read_bytes() == b"RIFF...."
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["message_sid"] == SID
    assert sidecar["key"] == stored.key
    assert sidecar["content_type"] == "audio/wav"
    assert sidecar["size"] == 8
    assert len(sidecar["sha256"]) == 64
    # Nothing else but the ref pointer, and no temp files left behind.
    assert [p.name for p in stored_files(tmp_path)] == sorted([path.name, path.name + ".json", f".{SID}_0.ref"])


def test_data_without_sidecar_is_invisible_and_replaced(tmp_path: Path) -> None:
    """A writer that died between the data and the sidecar leaves bytes nobody reads; the next put cleans up."""
    store = FilesystemStore(tmp_path)
    stored, _ = store.put(ref(), b"first", content_type="audio/wav", metadata={}, received_at=WHEN)
    path = tmp_path / stored.key
    path.with_name(path.name + ".json").unlink()  # as if the process died before the sidecar's rename
    assert store.find(ref()) is None
    assert store.list("15551234567") == []
    with pytest.raises(KeyError):
        store.get(stored.key)
    later = WHEN + timedelta(hours=1)
    again, created = store.put(ref(), b"second", content_type="audio/wav", metadata={}, received_at=later)
    assert created and again.key != stored.key
    assert not path.exists()  # the orphan is gone
    assert store.get(again.key) == b"second"


def test_a_removed_root_is_not_ready(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "media")
    (tmp_path / "media").rmdir()
    assert store.check() == "MISSING"


def test_a_symlinked_prefix_leading_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "whatsapp").mkdir(parents=True)
    (root / "whatsapp" / "15551234567").symlink_to(outside, target_is_directory=True)
    store = FilesystemStore(root)
    with pytest.raises(InvalidKey):
        store.put(ref(), b"x", content_type="audio/wav", metadata={}, received_at=WHEN)
    assert list(outside.iterdir()) == []
