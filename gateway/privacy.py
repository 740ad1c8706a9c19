"""What people can see and erase of what the bot keeps of them, and for how long it keeps it.

The bot keeps voices and photos of faces: personal, and in many places biometric, data. So:
- the first reply to a sender of whom nothing is kept yet says what is kept and how to see or erase it;
- ``MY DATA`` answers how many voice messages and photos are kept, their size and their dates;
- ``DELETE`` says what would be erased and asks for ``DELETE ALL`` within 10 minutes; that erases
  everything of the sender's: media, metadata, idempotency bookkeeping and what still waits in the spool;
- an erase leaves an ``erased`` marker with its time in the store, and an item received before it is never
  stored afterwards, by any process, on any retry (gateway.processing checks before storing and after);
- ``RETENTION_DAYS`` expires old media (a bucket lifecycle rule where S3 takes one, else the worker's sweep);
- ``python -m gateway.media delete|export`` do the same for requests that arrive by email.

Twilio reserves STOP, START, HELP, YES and a few more keywords for itself; these commands avoid them.
Every erase and export writes one audit line (logger ``gateway.audit``) with the masked id, counts and who
ran it. State shared between requests (a DELETE waiting for its DELETE ALL, the notice sent, the erase
time) lives in the store as per-sender markers, so every gateway replica and the worker see the same.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

from gateway import replies
from gateway.intake import Forgets
from gateway.sender import mask_phone, redact_sender
from gateway.storage.base import Store, StoredObject
from gateway.storage.keys import AUDIO, parse_key

audit = logging.getLogger("gateway.audit")
logger = logging.getLogger(__name__)

# How long a DELETE waits for its DELETE ALL.
CONFIRM_WINDOW = timedelta(minutes=10)

NOTICE = (
    "I keep the voice messages and face photos you send me{retention}. "
    "Send {words.my_data} to see what I keep, or {words.delete} to erase it."
)


@dataclass(frozen=True)
class CommandWords:
    """What a person types on a channel for each command: the replies name them, so they read right there."""

    my_data: str
    delete: str
    delete_all: str


# WhatsApp's words (Telegram has its slash commands: gateway.telegram.webhook).
CHAT_WORDS = CommandWords(my_data="MY DATA", delete="DELETE", delete_all="DELETE ALL")


class Command(Enum):
    MY_DATA = "my_data"
    DELETE = "delete"
    DELETE_ALL = "delete_all"


# The whole message, any case, any spacing, a full stop or exclamation mark allowed after it.
_COMMANDS = {"MY DATA": Command.MY_DATA, "MYDATA": Command.MY_DATA,
             "DELETE": Command.DELETE, "DELETE ALL": Command.DELETE_ALL}


def parse_command(body: str) -> Command | None:
    """The privacy command a message is, if it is exactly one (a sentence merely containing "delete" is not)."""
    words = " ".join(body.split()).upper().rstrip(".!")
    return _COMMANDS.get(words)


@dataclass(frozen=True)
class Usage:
    """What is kept of one sender, as MY DATA reports it and the export contains it."""

    voice_messages: int
    photos: int
    total_bytes: int
    first: datetime | None
    last: datetime | None

    @classmethod
    def of(cls, objects: list[StoredObject]) -> Usage:
        times = [parse_key(o.key)[1] for o in objects]
        audio = sum(1 for o in objects if o.key.split("/")[2] == AUDIO)
        return cls(
            voice_messages=audio,
            photos=len(objects) - audio,
            total_bytes=sum(o.size for o in objects),
            first=min(times, default=None),
            last=max(times, default=None),
        )

    @property
    def files(self) -> int:
        return self.voice_messages + self.photos

    def describe(self) -> str:
        """"3 voice messages and 2 photos (4.1 MB)": the part of a reply that says what is kept."""
        parts = [_count(self.voice_messages, "voice message"), _count(self.photos, "photo")]
        return f"{' and '.join(parts)} ({_size(self.total_bytes)})"


@dataclass(frozen=True)
class Erased:
    media: int  # stored voice messages and photos removed
    spooled: int  # messages still waiting in the intake (this host's spool), removed unprocessed


class Privacy:
    def __init__(
        self,
        store: Store,
        intake: Forgets | None,
        *,
        retention_days: int | None = None,
        notice: str = "",
        policy_url: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        # What still waits to be processed (the spool): an erase drops the sender's messages there too.
        self._intake = intake
        self._retention_days = retention_days
        self._kept_for = f" for {retention_days} days" if retention_days else " until you erase them"
        # An operator's own text is sent as written, on every channel; the built-in one names the channel's words.
        self._custom_notice = notice
        self._policy = f" Privacy policy: {policy_url}" if policy_url else ""
        self._clock = clock

    # -- the chat commands ------------------------------------------------------------------------------

    def answer(self, command: Command, sender: str, words: CommandWords = CHAT_WORDS) -> str:
        """The reply to a privacy command from ``sender``; an OSError if the store cannot be read."""
        now = self._clock()
        if command is Command.MY_DATA:
            return self._my_data(sender, words)
        if command is Command.DELETE_ALL:
            requested = self._store.marker("erase_requested", sender)
            if requested is not None and timedelta(0) <= now - requested <= CONFIRM_WINDOW:
                erased = self.erase(sender, by="user")
                return (f"Done: I erased {_count(erased.media, 'file')} I kept for you. "
                        "Anything you send from now on is kept again.")
            # No DELETE before it, or too long ago: ask again rather than erase on a stray message.
        return self._ask_to_confirm(sender, now, words)

    def reply(self, command: Command, sender: str, message_sid: str, words: CommandWords = CHAT_WORDS) -> str:
        """``answer``, or, when the store cannot be reached, the sentence saying so (and a log line): what both
        channels' webhooks send."""
        try:
            return self.answer(command, sender, words)
        except OSError as error:
            logger.error("privacy command failed",
                         extra={"message_sid": message_sid, "error": redact_sender(str(error), sender)})
            return replies.PRIVACY_UNAVAILABLE

    def notice_if_first(self, sender: str, message_sid: str, words: CommandWords = CHAT_WORDS) -> str | None:
        """``notice``, or None when the store cannot say (the notice then goes out next time)."""
        try:
            return self.notice(sender, words)
        except OSError as error:
            logger.warning("could not check whether to send the privacy notice",
                           extra={"message_sid": message_sid, "error": redact_sender(str(error), sender)})
            return None

    def notice(self, sender: str, words: CommandWords = CHAT_WORDS) -> str | None:
        """The privacy notice, the first time ``sender`` hears from the bot while nothing of theirs is kept."""
        if self._store.marker("noticed", sender) is not None:
            return None
        kept = self._store.holds_any(sender)
        self._store.set_marker("noticed", sender, self._clock())
        if kept:
            return None
        return (self._custom_notice or NOTICE.format(retention=self._kept_for, words=words)) + self._policy

    def _my_data(self, sender: str, words: CommandWords) -> str:
        usage = Usage.of(self._store.list(sender))
        if usage.files == 0:
            return f"I keep nothing of yours. Voice messages and face photos you send me are kept{self._kept_for}."
        assert usage.first is not None and usage.last is not None
        span = (f"from {usage.first:%Y-%m-%d} to {usage.last:%Y-%m-%d}" if usage.first.date() != usage.last.date()
                else f"from {usage.first:%Y-%m-%d}")
        retention = f" Each is kept for {self._retention_days} days." if self._retention_days else ""
        return f"I keep {usage.describe()} of yours, {span}.{retention} Send {words.delete} to erase them."

    def _ask_to_confirm(self, sender: str, now: datetime, words: CommandWords) -> str:
        usage = Usage.of(self._store.list(sender))
        self._store.set_marker("erase_requested", sender, now)
        what = usage.describe() if usage.files else "nothing stored yet, and any message still being processed"
        return f"This will erase {what}. To confirm, send {words.delete_all} within 10 minutes."

    # -- erasure, export, retention ----------------------------------------------------------------------

    def erase(self, sender: str, *, by: str) -> Erased:
        """Erase everything of ``sender``'s. The marker goes first: whatever is being stored for them right
        now, here or in another process, sees it and removes its own object (gateway.processing)."""
        self._store.set_marker("erased", sender, self._clock())
        media = self._store.erase(sender)
        spooled = self._intake.forget_sender(sender) if self._intake is not None else 0
        for marker in ("erase_requested", "noticed"):
            self._store.clear_marker(marker, sender)
        audit.info("privacy erase", extra={"sender": mask_phone(sender), "media": media, "spooled": spooled,
                                           "by": by})
        return Erased(media=media, spooled=spooled)

    def usage(self, sender: str) -> Usage:
        return Usage.of(self._store.list(sender))

    def export(self, sender: str, out: Path, *, by: str) -> Usage:
        """Everything kept of ``sender``, with its metadata, as a zip (a data-access request).

        Written to a temp file beside ``out`` and renamed, so an interrupted export leaves no partial zip.
        """
        objects = self._store.list(sender)
        tmp = out.with_name(f".{out.name}.part")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
                for stored in objects:
                    archive.writestr(stored.key, self._store.get(stored.key))
                    archive.writestr(f"{stored.key}.json", json.dumps(dict(stored.metadata), indent=2,
                                                                      ensure_ascii=False, default=str))
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        usage = Usage.of(objects)
        audit.info("privacy export", extra={"sender": mask_phone(sender), "media": usage.files,
                                            "bytes": usage.total_bytes, "by": by})
        return usage

    def expire(self) -> int:
        """Remove media older than RETENTION_DAYS (the worker's sweep); 0 when retention is off."""
        if self._retention_days is None:
            return 0
        gone = self._store.expire(self._clock() - timedelta(days=self._retention_days))
        if gone:
            logger.info("expired old media", extra={"expired": gone, "retention_days": self._retention_days})
        return gone

    def forget_old_markers(self, erasure_memory: timedelta) -> int:
        """Drop the markers that name a sender once they are no longer needed, since each is their number:
        an erase after ``erasure_memory`` (when nothing received before it can still be retried: the spool
        gives up after SPOOL_GIVE_UP_AFTER_S), an unconfirmed DELETE after its 10 minutes, and, with
        RETENTION_DAYS, a notice older than that (such a sender simply gets the notice again)."""
        now = self._clock()
        limits = {"erased": erasure_memory, "erase_requested": CONFIRM_WINDOW}
        if self._retention_days is not None:
            limits["noticed"] = timedelta(days=self._retention_days)
        forgotten = 0
        for name, limit in limits.items():
            for sender, at in self._store.markers(name).items():
                if now - at > limit:
                    self._store.clear_marker(name, sender)
                    forgotten += 1
        if forgotten:
            logger.info("forgot old privacy markers", extra={"forgotten": forgotten})
        return forgotten


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    if n < 1000 * 1000:
        return f"{n / 1000:.0f} kB"
    return f"{n / 1000 / 1000:.1f} MB"

