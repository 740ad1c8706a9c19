"""The durable intake spool: every verified media webhook is on disk before Twilio gets its answer.

Twilio does not resend a webhook it got a 200 for, so once the gateway has answered, the spool is the
only copy of "this message still needs work". Layout, in SPOOL_DIR:

    {MessageSid}.spool   one entry per message, JSON lines, append-only:
                         line 1 the message as the webhook parsed it ("message": gateway.message.to_json,
                         with its channel, and its arrival time; never the media: Twilio keeps that at its
                         URL, Telegram behind a file_id, never the bot token or a file URL); then one line
                         per event: an item's final outcome, or an attempt that must be retried (with the
                         time it is due again), or that the user was told the deferred outcome (after
                         which nothing is told again). Entries written before the spool kept the parsed message
                         have the channel's raw fields as "form" (and "channel": "telegram" for Telegram)
                         instead; they are still read (gateway.intake.channels.message_of)
    failed/              entries given up on (INTAKE_MAX_ATTEMPTS attempts, or SPOOL_GIVE_UP_AFTER_S
                         passed), kept for a person to look at

Why this shape:
- Created whole or not at all: line 1 is written to a temp file, fsync'd, and hard-linked to its name
  (``link`` fails if the name exists, which is the dedup per MessageSid: a second delivery of the same
  message finds the first entry instead of making another), then the directory is fsync'd.
- Then only appended to (O_APPEND + fsync per line), never rewritten in place: a crash can at worst
  leave a torn last line, which the reader skips; nothing written before it can be damaged.
- Done means deleted: when every item has a final outcome the entry is unlinked (and the directory
  fsync'd), so an empty spool means nothing is owed. The store is idempotent per (MessageSid, index),
  so processing an entry again after a crash between "stored" and "unlinked" changes nothing.

Leases: whoever works on an entry holds ``fcntl.flock(LOCK_EX)`` on its open file. The kernel drops the
lock when the holder's process dies (kill -9 included), so a crashed worker can never leave a stale lease
that needs a timeout to expire, and two processes (gunicorn workers, spool workers, replicas on one node
or on a shared volume with working flock, e.g. a ReadWriteOnce PersistentVolume or local disk) never work
on the same entry at once. The entry is created already locked (the temp file is locked before it is
linked), so the webhook that wrote it keeps it until it has tried once. After taking a lock the holder
checks the name still points at the inode it locked: an entry finished and unlinked in between is gone,
not "free".
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.message import InboundMessage, to_json

logger = logging.getLogger(__name__)

SUFFIX = ".spool"
FAILED_DIR = "failed"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random.

    The fixed half keeps retries from hammering a dependency that is still down; the random half spreads
    the many entries that failed in the same outage so they don't all come back in one wave.
    """

    base_s: float
    max_s: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Pause after the ``attempt``-th failed attempt (1 = the first)."""
        step = min(self.max_s, self.base_s * 2 ** max(0, attempt - 1))
        return step / 2 + (rng or random).uniform(0, step / 2)


@dataclass
class Entry:
    """One spooled message as read from disk: the webhook and what has happened to it since."""

    message_sid: str
    received_at: datetime
    # The message as gateway.message.to_json wrote it (read back with gateway.intake.channels.message_of).
    message: dict[str, object] | None = None
    # An entry written before the spool kept the message: the channel's raw fields, and which channel's
    # parser reads them ("whatsapp": Twilio's form, "telegram": gateway.telegram.updates' form).
    form: dict[str, str] | None = None
    channel: str = "whatsapp"
    # Final outcome per media index ("saved", "no_face", ...): not tried again.
    finals: dict[int, str] = field(default_factory=dict)
    # Items a background attempt finished whose answer the user has not been sent yet: index -> (outcome,
    # sentence). Kept in the entry so a worker that dies before telling tells on the next pass, and one that
    # told (a "told" line) never tells again (gateway.intake.attempt).
    to_tell: dict[int, tuple[str, str]] = field(default_factory=dict)
    attempts: int = 0
    # Epoch seconds when the next attempt is due (0: now).
    due_at: float = 0.0


class Lease:
    """An exclusive hold on one entry (an flock on its open file), released by ``release()`` or process death."""

    def __init__(self, spool: Spool, path: Path, fd: int, entry: Entry) -> None:
        self._spool = spool
        self._path = path
        self._fd = fd
        self.entry = entry

    def record_final(self, index: int, outcome: str, *, tell: str | None = None) -> None:
        """An item's final outcome; ``tell``: the sentence still to be sent to the user for it (a deferred
        answer, gateway.deferred), kept until ``record_told``."""
        record: dict[str, object] = {"index": index, "outcome": outcome}
        if tell is not None:
            record["tell"] = tell
            self.entry.to_tell[index] = (outcome, tell)
        self._append(record)
        self.entry.finals[index] = outcome

    def record_told(self) -> None:
        """The user was sent the answers ``to_tell`` held (or sending was tried): never send them again."""
        self._append({"told": sorted(self.entry.to_tell)})
        self.entry.to_tell.clear()

    def record_retry(self, outcomes: Mapping[int, str], delay_s: float) -> None:
        """An attempt left items that must be tried again after ``delay_s``."""
        self.entry.attempts += 1
        # Kept to the millisecond, rounded down: rounding up could leave an entry due "now" not due for
        # another half millisecond, and a worker looking at once would pass it over.
        self.entry.due_at = math.floor((time.time() + delay_s) * 1000) / 1000
        self._append({"attempt": self.entry.attempts, "retry": {str(i): o for i, o in outcomes.items()},
                      "at": round(time.time(), 3), "due_at": self.entry.due_at})

    def complete(self) -> None:
        """Every item has its final outcome: the entry leaves the spool (then the lease is released)."""
        self._path.unlink(missing_ok=True)
        _fsync_dir(self._path.parent)
        self.release()

    def give_up(self) -> Path:
        """Move the entry to failed/ for a person to look at; nothing is retried any more."""
        target = self._path.parent / FAILED_DIR / self._path.name
        os.replace(self._path, target)
        _fsync_dir(target.parent)
        _fsync_dir(self._path.parent)
        self.release()
        return target

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = -1

    def _append(self, record: dict[str, object]) -> None:
        # One write() per line on an O_APPEND descriptor: a line is never interleaved with another.
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self._fd)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        (self.directory / FAILED_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, message: InboundMessage, received_at: datetime) -> Lease | None:
        """Spool a message and return the lease on its new entry; None when the entry already exists
        (another delivery of the same message id is spooled: ``lease()`` it instead)."""
        message_sid = message.message_sid
        path = self._path(message_sid)
        record: dict[str, object] = {"message_sid": message_sid, "received_at": received_at.isoformat(),
                                     "message": to_json(message)}
        tmp = self.directory / f".{message_sid}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else has this inode yet: never blocks
            try:
                os.link(tmp, path)
            except FileExistsError:
                os.close(fd)
                fd = -1
                return None
            _fsync_dir(self.directory)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return Lease(self, path, fd, _entry_from_record(record))

    def lease(self, message_sid: str, *, wait_s: float = 0.0) -> Lease | None:
        """The lease on an existing entry, waiting up to ``wait_s`` for its holder; None if it is held
        beyond that, or the entry does not exist (any more)."""
        path = self._path(message_sid)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is None or (current.st_ino, current.st_dev) != (held.st_ino, held.st_dev):
                os.close(fd)  # finished (unlinked) or moved to failed/ while we waited: not ours to redo
                return None
            try:
                entry = _read_entry(fd)
            except ValueError as error:
                os.close(fd)
                logger.error("unreadable spool entry left alone", extra={"message_sid": message_sid,
                                                                        "error": str(error)})
                return None
            return Lease(self, path, fd, entry)

    def writable(self) -> bool:
        """Whether a message could be spooled now: a small file is really created, written and removed in
        the directory (os.access alone says yes to root on an immutable directory, and nothing of a full disk)."""
        probe = self.directory / f".ready.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return False
        try:
            os.write(fd, b"ready\n")
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def due(self, now: float | None = None) -> list[str]:
        """MessageSids of entries due for an attempt, oldest due first (without taking their leases)."""
        now = time.time() if now is None else now
        found: list[tuple[float, str]] = []
        for path in self._entries():
            try:
                with open(path, "rb") as handle:
                    entry = _parse(handle.read())
            except (FileNotFoundError, ValueError):
                continue
            if entry.due_at <= now:
                found.append((entry.due_at, entry.message_sid))
        return [sid for _, sid in sorted(found)]

    def depth(self) -> int:
        """Entries still owed work (failed/ not counted)."""
        return sum(1 for _ in self._entries())

    def oldest_age_s(self, now: float | None = None) -> float:
        """Seconds since the oldest entry's webhook arrived; 0 when the spool is empty."""
        now = time.time() if now is None else now
        ages = []
        for path in self._entries():
            try:
                with open(path, "rb") as handle:
                    ages.append(now - _parse(handle.read()).received_at.timestamp())
            except (FileNotFoundError, ValueError):
                continue
        return max(ages, default=0.0)

    def failed(self) -> list[Path]:
        return sorted((self.directory / FAILED_DIR).glob(f"*{SUFFIX}"))

    def remove(self, matches: Callable[[Entry], bool]) -> int:
        """Delete every entry, owed or given up (failed/), for which ``matches`` is true; returns how many.

        For an erasure: an entry someone holds right now is deleted too (its holder's later appends go to
        the unlinked file and are lost with it); what that holder stores is dropped by the erase marker.
        """
        removed = 0
        for path in [*self._entries(), *self.failed()]:
            try:
                with open(path, "rb") as handle:
                    entry = _parse(handle.read())
            except (FileNotFoundError, ValueError):
                continue
            if matches(entry):
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            _fsync_dir(self.directory)
            _fsync_dir(self.directory / FAILED_DIR)
        return removed

    def _entries(self) -> Iterator[Path]:
        return (p for p in self.directory.glob(f"*{SUFFIX}") if not p.name.startswith("."))

    def _path(self, message_sid: str) -> Path:
        # MessageSid was validated by parse_webhook ((SM|MM) + 32 hex digits), a Telegram message id by
        # gateway.telegram.updates (TG + 32 hex digits): a safe file name either way.
        if not message_sid.isalnum():
            raise ValueError("MessageSid is not a safe file name")
        return self.directory / f"{message_sid}{SUFFIX}"


def _read_entry(fd: int) -> Entry:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return _parse(b"".join(chunks))


def _parse(data: bytes) -> Entry:
    lines = data.split(b"\n")
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError:
        raise ValueError("first line is not the webhook record") from None
    entry = _entry_from_record(first)
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash mid-append; or the empty string after the last "\n"
        if "outcome" in record:
            entry.finals[int(record["index"])] = str(record["outcome"])
            if "tell" in record:
                entry.to_tell[int(record["index"])] = (str(record["outcome"]), str(record["tell"]))
        elif "told" in record:
            for index in record["told"]:
                entry.to_tell.pop(int(index), None)
        elif "attempt" in record:
            entry.attempts = int(record["attempt"])
            entry.due_at = float(record["due_at"])
    return entry


def _entry_from_record(record: Mapping[str, object]) -> Entry:
    message, form = record.get("message"), record.get("form")
    if not isinstance(message, dict) and not isinstance(form, dict):
        raise ValueError("first line has neither the message nor, as written before, the webhook's form")
    received_at = datetime.fromisoformat(str(record["received_at"]))
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    return Entry(
        message_sid=str(record["message_sid"]),
        received_at=received_at,
        message=message if isinstance(message, dict) else None,
        form={str(k): str(v) for k, v in form.items()} if isinstance(form, dict) else None,
        channel=str(record.get("channel") or "whatsapp"),
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems refuse fsync on a directory; the data itself is synced
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
