"""The filesystem store: key layout, atomic pairs, one object per (sender, kind, MessageSid, index), containment."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.store import AUDIO, IMAGES, FilesystemStore, InvalidKey, MediaRef, media_key
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


# -- the filesystem store ---------------------------------------------------------------------------------


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
    assert store.get(stored.key) == b"RIFF...."
    assert store.find(ref()) == stored
    # Nothing else but the ref pointer, and no temp files left behind.
    assert [p.name for p in stored_files(tmp_path)] == sorted([path.name, path.name + ".json", f".{SID}_0.ref"])


def test_a_replay_with_a_later_time_finds_the_first_object(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    first, created = store.put(ref(), b"one", content_type="audio/wav", metadata={}, received_at=WHEN)
    again, created_again = store.put(
        ref(), b"two", content_type="audio/wav", metadata={}, received_at=WHEN + timedelta(seconds=30)
    )
    assert created and not created_again
    assert again.key == first.key
    assert store.get(first.key) == b"one"
    assert len(store.list("15551234567")) == 1


def test_other_indexes_kinds_and_messages_are_separate_objects(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    refs = [(ref(), "audio/wav"), (ref(index=1), "audio/wav"), (ref(IMAGES), "image/png"), (ref(sid=SID2), "audio/wav")]
    for r, ct in refs:
        assert store.put(r, b"x", content_type=ct, metadata={}, received_at=WHEN)[1]
    assert len(store.list("15551234567")) == 4
    assert len(store.list("15551234567", AUDIO)) == 3
    assert [o.key.rsplit("/", 1)[1] for o in store.list("15551234567", IMAGES)] == [f"20250304T050607Z_{SID}_0.png"]


def test_concurrent_puts_of_one_ref_store_one_object(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    start = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def deliver(n: int) -> None:
        start.wait()
        stored, created = store.put(
            ref(), f"copy {n}".encode(), content_type="audio/wav", metadata={}, received_at=WHEN + timedelta(seconds=n)
        )
        with lock:
            results.append((stored.key, created))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 1
    assert len({key for key, _ in results}) == 1
    assert len(store.list("15551234567")) == 1
    assert len([p for p in stored_files(tmp_path) if not p.name.startswith(".")]) == 2  # data + sidecar


def test_list_is_newest_first(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    for n, sid in enumerate([SID, SID2, "MM" + "ab" * 16]):
        store.put(ref(sid=sid), b"x", content_type="audio/wav", metadata={}, received_at=WHEN + timedelta(minutes=n))
    keys = [o.key for o in store.list("15551234567")]
    assert keys == sorted(keys, reverse=True)
    assert keys[0].endswith(f"_MM{'ab' * 16}_0.wav")
    assert store.list("15550000000") == []


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


def test_get_refuses_keys_outside_the_layout(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "root")
    (tmp_path / "secret").write_text("x")
    for key in ["../secret", "whatsapp/../../secret", "/etc/passwd", f"whatsapp/1555/audio/x_{SID}_0.wav"]:
        with pytest.raises(InvalidKey):
            store.get(key)
    with pytest.raises(InvalidKey):
        store.list("../..")


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
