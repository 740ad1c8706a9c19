"""The Store on a local filesystem (STORAGE=filesystem, MEDIA_ROOT): files and JSON sidecars, written atomically."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from gateway.storage.base import StoreBusy, StoredObject, newest_first
from gateway.storage.keys import (
    CHANNEL_FOLDERS, EXTENSIONS, InvalidKey, MediaRef, check_marker, is_media_key, is_sender_id, marker_text,
    media_key, parse_key, parse_marker, sender_of_folder, sender_prefix,
)


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
        return self._load(key) if is_media_key(key) else None

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
                if is_media_key(candidate):
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
                         if is_media_key(f"{prefix}/{entry.name}") and _sidecar(entry).is_file()]
        return keys

    def _marker_path(self, name: str, sender_id: str) -> Path:
        """Markers live beside the senders' folders, not in them: ``.mediabot/markers/{name}/{channel}/{id}``."""
        check_marker(name, sender_id)
        return self._path_under_root(f".mediabot/markers/{name}/{sender_prefix(sender_id)}")

    def _ref_path(self, ref: MediaRef) -> Path:
        return self._path_under_root(f"{sender_prefix(ref.sender_id)}/{ref.kind}") / f".{ref.message_sid}_{ref.index}.ref"

    def _path(self, key: str) -> Path:
        if not is_media_key(key):
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
        if is_media_key(key):
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
