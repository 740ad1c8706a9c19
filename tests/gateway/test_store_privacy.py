"""What erasure and retention need from a store, against both stores (the filesystem and S3 on SeaweedFS):
erase one sender whole and nobody else, expire by age, per-sender markers every process can see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import Settings
from gateway.storage.s3 import MinioStore
from gateway.privacy import Privacy
from gateway.storage.base import Store
from gateway.storage.filesystem import FilesystemStore
from gateway.storage.keys import AUDIO, IMAGES, InvalidKey, MediaRef, parse_key
from tests.fixtures.gateway import stored_files
from tests.fixtures.s3 import SeaweedS3

WHEN = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SHORT, LONG = "1555123", "15551234"  # one id is a prefix of the other


def sid(n: int) -> str:
    return "MM" + f"{n:032x}"


def put(store: Store, sender: str, n: int, kind: str = AUDIO, when: datetime = WHEN, faces: int = 1) -> str:
    content_type = "audio/wav" if kind == AUDIO else "image/jpeg"
    metadata: dict[str, object] = {"profile_name": "Ada"}
    if kind == IMAGES:  # enough faces to need S3's overflow object for the metadata
        metadata["faces"] = [{"box": {"left": i, "top": i, "right": i + 9, "bottom": i + 9}} for i in range(faces)]
    stored, created = store.put(MediaRef(sender, kind, sid(n), 0), b"x" * (100 + n), content_type=content_type,
                                metadata=metadata, received_at=when)
    assert created
    return stored.key


def everything(store: Store) -> list[str]:
    """Every object or file the store holds, bookkeeping and markers included."""
    if isinstance(store, FilesystemStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    assert isinstance(store, MinioStore)
    return sorted(o.object_name or "" for o in store.client.list_objects(store.bucket, recursive=True))


def test_erase_removes_every_object_of_one_sender_and_nothing_of_another(each_store: Store) -> None:
    put(each_store, SHORT, 1)
    put(each_store, SHORT, 2, IMAGES, faces=200)
    put(each_store, LONG, 3)
    put(each_store, LONG, 4, IMAGES, faces=200)
    before_long = [name for name in everything(each_store) if LONG in name]

    assert each_store.erase(SHORT) == 2

    assert each_store.list(SHORT) == [] and not each_store.holds_any(SHORT)
    left = everything(each_store)
    assert not [name for name in left if f"/{SHORT}/" in name or name.endswith(f"/{SHORT}")], left
    assert [name for name in left if LONG in name] == before_long  # media, sidecars, claims, overflow all kept
    assert len(each_store.list(LONG)) == 2
    assert each_store.erase(SHORT) == 0  # nothing left: still fine


def test_markers_are_per_sender_and_clearable(each_store: Store) -> None:
    assert each_store.marker("erased", SHORT) is None
    each_store.set_marker("erased", SHORT, WHEN)
    assert each_store.marker("erased", SHORT) == WHEN
    assert each_store.marker("erased", LONG) is None and each_store.marker("noticed", SHORT) is None
    each_store.set_marker("erased", SHORT, WHEN + timedelta(hours=1))
    assert each_store.marker("erased", SHORT) == WHEN + timedelta(hours=1)
    each_store.set_marker("erased", LONG, WHEN)
    assert each_store.markers("erased") == {SHORT: WHEN + timedelta(hours=1), LONG: WHEN}
    assert each_store.markers("noticed") == {}
    each_store.clear_marker("erased", LONG)
    each_store.clear_marker("erased", SHORT)
    assert each_store.marker("erased", SHORT) is None
    each_store.clear_marker("erased", SHORT)  # clearing what is not there is fine
    # Markers live apart from the senders' folders: an erase of the media leaves them to the caller.
    each_store.set_marker("erased", SHORT, WHEN)
    each_store.erase(SHORT)
    assert each_store.marker("erased", SHORT) == WHEN
    with pytest.raises(InvalidKey):
        each_store.set_marker("anything", SHORT, WHEN)
    with pytest.raises(InvalidKey):
        each_store.marker("erased", "../etc")


def test_expire_removes_what_is_older_than_the_limit_and_keeps_the_rest(each_store: Store) -> None:
    old_audio = put(each_store, SHORT, 1, when=WHEN - timedelta(days=31))
    old_photo = put(each_store, LONG, 2, IMAGES, when=WHEN - timedelta(days=40), faces=200)
    young = put(each_store, SHORT, 3, when=WHEN - timedelta(days=29))
    assert each_store.expire(WHEN - timedelta(days=30)) == 2
    assert [o.key for o in each_store.list(SHORT)] == [young]
    assert each_store.list(LONG) == []
    assert not [name for name in everything(each_store) if old_audio.rsplit("/", 1)[1].split(".")[0] in name]
    assert not [name for name in everything(each_store) if sid(2) in name], old_photo


def test_retention_days_through_privacy_with_an_injected_clock(each_store: Store) -> None:
    put(each_store, SHORT, 1, when=WHEN - timedelta(days=8))
    put(each_store, SHORT, 2, when=WHEN - timedelta(days=6))
    assert Privacy(each_store, None, clock=lambda: WHEN).expire() == 0  # RETENTION_DAYS unset: keep
    assert Privacy(each_store, None, retention_days=7, clock=lambda: WHEN).expire() == 1
    assert len(each_store.list(SHORT)) == 1


def test_delete_removes_one_object_and_its_bookkeeping(each_store: Store) -> None:
    key = put(each_store, SHORT, 1, IMAGES, faces=200)
    other = put(each_store, SHORT, 2)
    assert each_store.delete(key) is True
    assert [o.key for o in each_store.list(SHORT)] == [other]
    assert each_store.find(MediaRef(SHORT, IMAGES, sid(1), 0)) is None
    assert not [name for name in everything(each_store) if sid(1) in name]
    assert each_store.delete(key) is False
    # Stored again after a delete: a new object, not "already saved".
    put(each_store, SHORT, 1, IMAGES)


def test_holds_any(each_store: Store) -> None:
    assert not each_store.holds_any(SHORT)
    put(each_store, LONG, 1)
    assert not each_store.holds_any(SHORT) and each_store.holds_any(LONG)


def test_the_filesystem_keeps_markers_out_of_the_senders_folders(tmp_path) -> None:  # noqa: ANN001
    store = FilesystemStore(tmp_path)
    store.set_marker("noticed", SHORT, WHEN)
    assert stored_files(tmp_path) == []
    assert (tmp_path / ".mediabot" / "markers" / "noticed" / "whatsapp" / SHORT).is_file()


def test_s3_retention_is_a_bucket_lifecycle_rule_set_at_start_up(s3_server: SeaweedS3, s3_bucket: str) -> None:
    """MinIO (and SeaweedFS) take a lifecycle rule: the bucket expires media and the worker need not sweep."""
    env = {key: str(value) for key, value in s3_server.gateway_env(s3_bucket).items()}
    store = MinioStore.connect(Settings.from_env({**env, "RETENTION_DAYS": "30"}))
    try:
        assert store.expires_by_itself
        rules = store.client.get_bucket_lifecycle(store.bucket).rules
        assert [(r.rule_id, r.expiration.days) for r in rules] == [("mediabot-retention", 30)]
    finally:
        store.close()
    without = MinioStore.connect(Settings.from_env(env))
    try:
        assert not without.expires_by_itself  # RETENTION_DAYS unset: no rule is set, nothing expires
    finally:
        without.close()


def test_a_server_that_refuses_the_rule_leaves_retention_to_the_sweep(s3_server: SeaweedS3, s3_bucket: str) -> None:
    env = {key: str(value) for key, value in s3_server.gateway_env(s3_bucket).items()}
    store = MinioStore.connect(Settings.from_env(env))
    try:
        refusing = MinioStore(store.client, "no-such-bucket-for-lifecycle")  # the server answers NoSuchBucket
        assert refusing.set_retention(30) is False and not refusing.expires_by_itself
    finally:
        store.close()


# -- channels: Telegram senders beside WhatsApp ones ----------------------------------------------------------

TG = "telegram/15551234"  # the same digits as the WhatsApp sender LONG


def tg_sid(n: int) -> str:
    return "TG" + f"{n:032x}"


def put_tg(store: Store, n: int, kind: str = AUDIO, when: datetime = WHEN) -> str:
    content_type = "audio/wav" if kind == AUDIO else "image/jpeg"
    stored, created = store.put(MediaRef(TG, kind, tg_sid(n), 0), b"t" * (50 + n), content_type=content_type,
                                metadata={"profile_name": "Tele"}, received_at=when)
    assert created
    return stored.key


def test_telegram_senders_have_their_own_folder_bookkeeping_and_markers(each_store: Store) -> None:
    wa = put(each_store, LONG, 1)
    tg_audio, tg_photo = put_tg(each_store, 7), put_tg(each_store, 8, IMAGES)
    assert tg_audio == f"telegram/15551234/audio/20260304T050607Z_{tg_sid(7)}_0.wav"
    assert wa.startswith(f"whatsapp/{LONG}/")
    assert parse_key(tg_audio)[0] == MediaRef(TG, AUDIO, tg_sid(7), 0)
    # A replay of the same Telegram message lands on the stored object.
    again, created = each_store.put(MediaRef(TG, AUDIO, tg_sid(7), 0), b"other", content_type="audio/wav",
                                    metadata={}, received_at=WHEN + timedelta(seconds=5))
    assert (again.key, created) == (tg_audio, False)

    assert each_store.senders() == sorted([LONG, TG])
    assert [o.key for o in each_store.list(TG)] == sorted([tg_audio, tg_photo], reverse=True)
    assert [o.key for o in each_store.list(LONG)] == [wa]
    each_store.set_marker("noticed", TG, WHEN)
    assert each_store.marker("noticed", TG) == WHEN and each_store.marker("noticed", LONG) is None
    each_store.set_marker("noticed", LONG, WHEN + timedelta(hours=1))
    assert each_store.markers("noticed") == {TG: WHEN, LONG: WHEN + timedelta(hours=1)}

    assert each_store.erase(TG) == 2
    assert each_store.list(TG) == [] and not each_store.holds_any(TG)
    assert [o.key for o in each_store.list(LONG)] == [wa] and each_store.holds_any(LONG)
    assert not any(name.startswith(("telegram/", ".mediabot/claims/telegram/")) for name in everything(each_store))


def test_expiry_covers_both_channels(each_store: Store) -> None:
    put(each_store, LONG, 1, when=WHEN - timedelta(days=40))
    put_tg(each_store, 2, when=WHEN - timedelta(days=40))
    kept = put_tg(each_store, 3)
    assert each_store.expire(WHEN - timedelta(days=30)) == 2
    assert [o.key for o in each_store.list(TG)] == [kept] and each_store.list(LONG) == []


@pytest.mark.parametrize(("sender", "message_id"), [
    ("telegram/12", "MM" + "0" * 32),  # a WhatsApp SID under a Telegram sender
    ("15551234", "TG" + "0" * 32),  # a Telegram id under a WhatsApp sender
    ("telegram/12", "TG" + "0" * 31), ("telegram/12", "TG" + "A" * 32),
    *((sender, "TG" + "0" * 32) for sender in ("telegram/../x", "telegram/-5", "telegram/abc", "telegram/1/2")),
])
def test_refs_mixing_channels_or_escaping_are_refused(sender: str, message_id: str) -> None:
    with pytest.raises(InvalidKey):
        MediaRef(sender, AUDIO, message_id, 0)
