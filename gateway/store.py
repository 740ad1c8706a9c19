"""Where kept media goes: a small Store interface and its filesystem implementation.

Key layout (the same later in MinIO):
    whatsapp/{sender_id}/audio/{UTC yyyymmddTHHMMSSZ}_{MessageSid}_{index}.wav
    whatsapp/{sender_id}/images/{UTC yyyymmddTHHMMSSZ}_{MessageSid}_{index}.{jpg|png|webp}
    telegram/{user_id}/audio/{UTC yyyymmddTHHMMSSZ}_TG{32 hex}_{index}.wav      (and images/ alike)
The channel is the first segment. A WhatsApp sender id is the bare number; a Telegram one is
``telegram/{user_id}`` (gateway.sender), so ``sender_prefix`` gives the folder for either. A Telegram
message's id in place of the MessageSid is ``TG`` and an HMAC of its chat id and message id, what a resent
update keeps (gateway.telegram.updates.message_id).
each with its metadata beside it (a ``{key}.json`` sidecar here). The time in the key is when the webhook
arrived, so a redelivered webhook would compute a different key: identity is (sender, kind, MessageSid,
index) — a ``MediaRef`` — and the Store, not the key, is what makes a second delivery a no-op.

The interface is kept to what S3 can do cheaply (put, get, list by prefix, one small pointer object per
ref, written with a conditional put), so the MinIO store (gateway.minio_store) can implement it without a
database; there the pointer objects live under a prefix of their own, out of the senders' folders. ``open_store(settings)`` picks the one STORAGE names.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.config import Settings

AUDIO = "audio"
IMAGES = "images"

# Stored content type -> file extension, per kind. Audio is always the service's WAV; photos keep their format.
EXTENSIONS: dict[str, dict[str, str]] = {
    AUDIO: {"audio/wav": "wav"},
    IMAGES: {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"},
}

# Path segments that can never climb, hide or collide: no dots, no separators, bounded length.
_SEGMENT = r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}"
_WHATSAPP_SID = r"(?:SM|MM)[0-9a-fA-F]{32}"
# gateway.telegram.updates.message_id: letters and digits only, so a safe spool file name too.
_TELEGRAM_MESSAGE_ID = r"TG[0-9a-f]{32}"
_MESSAGE_SID = rf"(?:{_WHATSAPP_SID}|{_TELEGRAM_MESSAGE_ID})"
# A sender id: a WhatsApp number as a bare segment, or "telegram/" and a Telegram user id.
_SENDER = rf"(?:{_SEGMENT}|telegram/[0-9]{{1,20}})"
_KEY = re.compile(
    rf"(?:whatsapp/(?P<sender>{_SEGMENT})|(?P<telegram>telegram/[0-9]{{1,20}}))/(?P<kind>audio|images)/"
    rf"(?P<ts>[0-9]{{8}}T[0-9]{{6}}Z)_(?P<sid>{_MESSAGE_SID})_(?P<index>[0-9])\.(?P<ext>wav|jpg|png|webp)"
)
# Top-level folders holding senders, and how a folder name becomes a sender id.
CHANNEL_FOLDERS = ("telegram", "whatsapp")


class InvalidKey(ValueError):
    """A key or ref component that could escape its prefix; never reaches the filesystem."""


class StoreBusy(OSError):
    """Another delivery of the same media held the lock for longer than we may wait."""


class StoreUnavailable(OSError):
    """The storage backend could not be reached or refused a request; the message says which and why.

    An OSError like the filesystem's own errors, so the webhook answers "couldn't save" for both stores alike.
    """


class StoreStartupError(RuntimeError):
    """The configured storage cannot be used at all (unreachable, refused credentials, no bucket): stop the process."""


@dataclass(frozen=True)
class MediaRef:
    """The identity of one media item: what makes a replayed webhook land on the object already stored."""

    sender_id: str
    kind: str  # AUDIO or IMAGES
    message_sid: str
    index: int

    def __post_init__(self) -> None:
        if not is_sender_id(self.sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        if self.kind not in EXTENSIONS:
            raise InvalidKey(f"unknown kind {self.kind!r}")
        # Each channel's own message ids only: a Telegram id can never file media under a WhatsApp sender.
        telegram = self.sender_id.startswith("telegram/")
        if not re.fullmatch(_TELEGRAM_MESSAGE_ID if telegram else _WHATSAPP_SID, self.message_sid):
            raise InvalidKey("message id is not one of the sender's channel")
        if not 0 <= self.index <= 9:
            raise InvalidKey(f"media index {self.index} is out of 0..9")


@dataclass(frozen=True)
class StoredObject:
    key: str
    content_type: str
    size: int
    # The whole sidecar: the caller's metadata plus key, content_type, size, sha256 and stored_at.
    metadata: Mapping[str, object]


class Store(Protocol):
    # True when the storage itself expires old media (an S3 bucket lifecycle rule for RETENTION_DAYS), so
    # the worker need not sweep.
    expires_by_itself: bool

    def put(
        self,
        ref: MediaRef,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, object],
        received_at: datetime,
    ) -> tuple[StoredObject, bool]:
        """Store ``data`` for ``ref`` unless it is already stored; returns (the object, whether it was created)."""
        ...

    def find(self, ref: MediaRef) -> StoredObject | None:
        """The complete object stored for ``ref``, if any."""
        ...

    def get(self, key: str) -> bytes:
        """The stored bytes; KeyError if there is no complete object under ``key``."""
        ...

    def list(self, sender_id: str, kind: str | None = None) -> list[StoredObject]:
        """A sender's complete objects (of one kind, or all), newest first."""
        ...

    def senders(self) -> list[str]:
        """Every sender id that has a prefix in the store, sorted."""
        ...

    def holds_any(self, sender_id: str) -> bool:
        """Whether anything at all is kept for this sender (cheaper than ``list``: no metadata is read)."""
        ...

    def delete(self, key: str) -> bool:
        """Remove one media object and its bookkeeping; False if there was none."""
        ...

    def erase(self, sender_id: str) -> int:
        """Remove everything kept for this sender (media, metadata, claims); returns how many media objects
        went. Markers (below) are not touched: the privacy layer decides which of those to keep."""
        ...

    def expire(self, before: datetime) -> int:
        """Remove every media object received before ``before`` (retention); returns how many went."""
        ...

    def set_marker(self, name: str, sender_id: str, at: datetime) -> None:
        """Record a per-sender event (``name`` from MARKERS) with its time, visible to every process."""
        ...

    def marker(self, name: str, sender_id: str) -> datetime | None:
        """When ``set_marker(name, sender_id, ...)`` last happened, if it did and was not cleared."""
        ...

    def clear_marker(self, name: str, sender_id: str) -> None:
        ...

    def markers(self, name: str) -> dict[str, datetime]:
        """Every sender with marker ``name``, and its time (for forgetting old ones)."""
        ...

    def check(self) -> str:
        """"SERVING" when the store can take writes now, else one word saying why not (for /readyz)."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def open_store(settings: Settings, *, for_writing: bool = True) -> Store:
    """The store STORAGE names, ready to use; StoreStartupError with a readable message if it cannot be.

    ``for_writing=False`` (the browsing command) writes no probe (no store creates a missing bucket).
    """
    if settings.storage == "minio":
        from gateway.minio_store import MinioStore  # imported only when used: the filesystem needs no S3 SDK

        return MinioStore.connect(settings, for_writing=for_writing)
    if settings.storage == "filesystem":
        try:
            return FilesystemStore(settings.media_root)
        except OSError as error:
            raise StoreStartupError(f"MEDIA_ROOT {settings.media_root} cannot be used: {error}") from None
    raise StoreStartupError(f"no store for STORAGE={settings.storage!r}")


def parse_key(key: str) -> tuple[MediaRef, datetime]:
    """The ref and receive time a media key was made from; InvalidKey if it is not one."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise InvalidKey("not a media key")
    ref = MediaRef(match["telegram"] or match["sender"], match["kind"], match["sid"], int(match["index"]))
    return ref, datetime.strptime(match["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def is_media_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def is_sender_id(value: str) -> bool:
    """Whether ``value`` can be a sender id (the same rule MediaRef applies): a WhatsApp number's safe
    segment, or ``telegram/`` and digits."""
    return re.fullmatch(_SENDER, value) is not None


def sender_prefix(sender_id: str) -> str:
    """The folder of a (valid) sender id: ``whatsapp/{number}`` or ``telegram/{user_id}``."""
    return sender_id if sender_id.startswith("telegram/") else f"whatsapp/{sender_id}"


def sender_of_folder(channel: str, name: str) -> str | None:
    """The sender id a folder ``{channel}/{name}`` belongs to, or None if it cannot be one."""
    sender = name if channel == "whatsapp" else f"{channel}/{name}"
    if channel not in CHANNEL_FOLDERS or "/" in name or not is_sender_id(sender):
        return None
    return sender


# Per-sender events the privacy layer records in the store, so every gateway process and worker sees them:
#   erased           when everything of the sender's was erased; items received before it are never stored
#   erase_requested  a DELETE waiting for its DELETE ALL
#   noticed          the privacy notice was sent
MARKERS = frozenset({"erased", "erase_requested", "noticed"})


def check_marker(name: str, sender_id: str) -> None:
    """InvalidKey unless ``name`` is a known marker and ``sender_id`` a safe path segment."""
    if name not in MARKERS:
        raise InvalidKey(f"unknown marker {name!r}")
    if not is_sender_id(sender_id):
        raise InvalidKey("sender id is not a safe path segment")


def marker_text(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("marker times must be timezone-aware")
    return at.astimezone(UTC).isoformat()


def parse_marker(text: str) -> datetime | None:
    """The time a marker holds; None for a damaged one (a torn write reads as "not set")."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def newest_first(objects: list[StoredObject]) -> list[StoredObject]:
    """Sorted by the key's file name, which starts with the UTC receive time (then MessageSid and index)."""
    return sorted(objects, key=lambda obj: obj.key.rsplit("/", 1)[1], reverse=True)


def media_key(ref: MediaRef, received_at: datetime, content_type: str) -> str:
    """The storage key for ``ref``; ``received_at`` must be timezone-aware (it is written as UTC)."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    try:
        ext = EXTENSIONS[ref.kind][content_type]
    except KeyError:
        raise InvalidKey(f"{content_type!r} is not stored as {ref.kind}") from None
    stamp = received_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{sender_prefix(ref.sender_id)}/{ref.kind}/{stamp}_{ref.message_sid}_{ref.index}.{ext}"


class FilesystemStore:
    """Files under ``root``, written so that a reader sees either nothing or a whole object.

    Atomicity: the data and its sidecar are each written to a temp file in the destination directory and
    moved into place with ``os.replace`` (atomic within one filesystem). The data goes first and the
    sidecar last, and an object counts as present only when its sidecar exists, so the sidecar is the
    commit marker: a reader never sees metadata for missing or half-written bytes, and a crash between
    the two leaves bytes without a sidecar, which every read ignores and the next put cleans up.

    Idempotency: each ref has a small pointer file ``.{MessageSid}_{index}.ref`` beside the objects,
    holding the key it was stored under. ``put`` takes an exclusive ``flock`` on it for the whole write,
    so two concurrent deliveries of the same webhook (even from different gunicorn workers) serialise:
    the second finds the first's complete object and returns it instead of writing another. ``flock``
    rather than an O_EXCL claim file because the kernel drops the lock when its holder dies, so a crash
    mid-write cannot leave a claim that blocks the media forever. (On S3 the same role is played by a
    conditional put, If-None-Match: *, of the pointer object.)

    Containment: keys are matched against a strict pattern (no dots, no separators inside segments) and
    the resolved path must stay under the resolved root, so nothing is written outside ``root``.
    """

    expires_by_itself = False  # the worker's sweep expires old media here (gateway.privacy)

    def __init__(self, root: Path | str, *, lock_timeout_s: float = 10.0) -> None:
        self._root = Path(root).resolve()
        self._root.mkdir(parents=True, exist_ok=True)
        self._lock_timeout_s = lock_timeout_s

    @property
    def root(self) -> Path:
        return self._root

    def put(
        self,
        ref: MediaRef,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, object],
        received_at: datetime,
    ) -> tuple[StoredObject, bool]:
        key = media_key(ref, received_at, content_type)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._ref_path(ref), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            self._lock(fd)
            previous = _read_fd(fd)
            if previous:
                existing = self._load(previous)
                if existing is not None:
                    return existing, False
                self._discard(previous)  # bytes left by a writer that died before its sidecar
            # Record the intent first, so a crash from here on leaves a findable (and cleanable) orphan.
            _rewrite_fd(fd, key)
            _write_atomically(path, data)
            sidecar = {
                **metadata,
                "key": key,
                "content_type": content_type,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "stored_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            _write_atomically(_sidecar(path), json.dumps(sidecar, indent=2, ensure_ascii=False).encode())
            _fsync_dir(path.parent)
            return StoredObject(key=key, content_type=content_type, size=len(data), metadata=sidecar), True
        finally:
            os.close(fd)  # also releases the flock

    def find(self, ref: MediaRef) -> StoredObject | None:
        try:
            key = self._ref_path(ref).read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        # A ref being rewritten right now can read as partial: that is simply "not stored (yet)".
        return self._load(key) if _KEY.fullmatch(key) else None

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not _sidecar(path).is_file():
            raise KeyError(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def list(self, sender_id: str, kind: str | None = None) -> list[StoredObject]:
        if not is_sender_id(sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        kinds = [kind] if kind is not None else sorted(EXTENSIONS)
        found: list[StoredObject] = []
        for one_kind in kinds:
            if one_kind not in EXTENSIONS:
                raise InvalidKey(f"unknown kind {one_kind!r}")
            prefix = f"{sender_prefix(sender_id)}/{one_kind}"
            directory = self._path_under_root(prefix)
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                candidate = f"{prefix}/{entry.name}"
                if _KEY.fullmatch(candidate):
                    stored = self._load(candidate)
                    if stored is not None:
                        found.append(stored)
        return newest_first(found)

    def senders(self) -> list[str]:
        found = []
        for channel in CHANNEL_FOLDERS:
            directory = self._root / channel
            for entry in directory.iterdir() if directory.is_dir() else ():
                if entry.is_dir() and (sender := sender_of_folder(channel, entry.name)) is not None:
                    found.append(sender)
        return sorted(found)

    def holds_any(self, sender_id: str) -> bool:
        return bool(self._media_keys(sender_id))

    def delete(self, key: str) -> bool:
        ref, _ = parse_key(key)
        existed = self._load(key) is not None
        self._discard(key)
        ref_path = self._ref_path(ref)
        try:
            if ref_path.read_text(encoding="ascii").strip() == key:
                ref_path.unlink(missing_ok=True)
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        return existed

    def erase(self, sender_id: str) -> int:
        if not is_sender_id(sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        count = len(self._media_keys(sender_id))
        folder = self._path_under_root(sender_prefix(sender_id))
        # The whole folder: media, sidecars, pointer files, and the temp files of a write in progress
        # (that write then fails and is retried, and the erase marker drops it).
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            shutil.rmtree(folder)  # a second pass for what a concurrent write created meanwhile; raises if stuck
        return count

    def expire(self, before: datetime) -> int:
        gone = 0
        for sender in self.senders():
            for key in self._media_keys(sender):
                if parse_key(key)[1] < before and self.delete(key):
                    gone += 1
        return gone

    def set_marker(self, name: str, sender_id: str, at: datetime) -> None:
        path = self._marker_path(name, sender_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, marker_text(at).encode("ascii"))
        _fsync_dir(path.parent)

    def marker(self, name: str, sender_id: str) -> datetime | None:
        try:
            return parse_marker(self._marker_path(name, sender_id).read_text(encoding="ascii"))
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def clear_marker(self, name: str, sender_id: str) -> None:
        self._marker_path(name, sender_id).unlink(missing_ok=True)

    def markers(self, name: str) -> dict[str, datetime]:
        found = {}
        for channel in CHANNEL_FOLDERS:
            folder = self._marker_path(name, "0").parent.parent / channel
            for entry in folder.iterdir() if folder.is_dir() else ():
                sender = sender_of_folder(channel, entry.name)
                if sender is not None and (at := self.marker(name, sender)) is not None:
                    found[sender] = at
        return found

    def check(self) -> str:
        if not self._root.is_dir():
            return "MISSING"
        return "SERVING" if os.access(self._root, os.W_OK | os.X_OK) else "NOT_WRITABLE"

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    # -- internals -------------------------------------------------------------------------------------

    def _media_keys(self, sender_id: str) -> list[str]:
        """Keys of the sender's complete media objects (sidecar present), without reading any metadata."""
        if not is_sender_id(sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        keys = []
        for kind in sorted(EXTENSIONS):
            prefix = f"{sender_prefix(sender_id)}/{kind}"
            directory = self._path_under_root(prefix)
            if directory.is_dir():
                keys += [f"{prefix}/{entry.name}" for entry in directory.iterdir()
                         if _KEY.fullmatch(f"{prefix}/{entry.name}") and _sidecar(entry).is_file()]
        return keys

    def _marker_path(self, name: str, sender_id: str) -> Path:
        """Markers live beside the senders' folders, not in them: ``.mediabot/markers/{name}/{channel}/{id}``."""
        check_marker(name, sender_id)
        return self._path_under_root(f".mediabot/markers/{name}/{sender_prefix(sender_id)}")

    def _ref_path(self, ref: MediaRef) -> Path:
        return self._path_under_root(f"{sender_prefix(ref.sender_id)}/{ref.kind}") / f".{ref.message_sid}_{ref.index}.ref"

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise InvalidKey("not a media key")
        return self._path_under_root(key)

    def _path_under_root(self, relative: str) -> Path:
        path = (self._root / relative).resolve()
        if not path.is_relative_to(self._root):
            raise InvalidKey("path leaves MEDIA_ROOT")
        return path

    def _load(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            sidecar = json.loads(_sidecar(path).read_text(encoding="utf-8"))
            size = path.stat().st_size
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return StoredObject(key=key, content_type=str(sidecar.get("content_type", "")), size=size, metadata=sidecar)

    def _discard(self, key: str) -> None:
        if _KEY.fullmatch(key):
            path = self._path(key)
            for leftover in (_sidecar(path), path):
                leftover.unlink(missing_ok=True)

    def _lock(self, fd: int) -> None:
        # Polling with LOCK_NB rather than a blocking flock: a holder stuck on a hung disk must not hang us.
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusy(errno.EWOULDBLOCK, "another delivery of this media is still being stored") from None
                time.sleep(0.01)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("ascii", errors="replace").strip()


def _rewrite_fd(fd: int, text: str) -> None:
    # In place, not temp + rename: the lock lives on this inode, and replacing it would hand a waiting
    # writer a different, unlocked file.
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("ascii"), 0)
    os.fsync(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
