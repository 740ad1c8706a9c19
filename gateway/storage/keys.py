"""Where each kept object lives: the key layout, the per-sender markers, and the checks that keep both safe.

Key layout (the same on disk and in S3):
    whatsapp/{sender_id}/audio/{UTC yyyymmddTHHMMSSZ}_{MessageSid}_{index}.wav
    whatsapp/{sender_id}/images/{UTC yyyymmddTHHMMSSZ}_{MessageSid}_{index}.{jpg|png|webp}
    telegram/{user_id}/audio/{UTC yyyymmddTHHMMSSZ}_TG{32 hex}_{index}.wav      (and images/ alike)
The channel is the first segment. A WhatsApp sender id is the bare number; a Telegram one is
``telegram/{user_id}`` (gateway.sender), so ``sender_prefix`` gives the folder for either. A Telegram
message's id in place of the MessageSid is ``TG`` and an HMAC of its chat id and message id, what a resent
update keeps (gateway.telegram.updates.message_id). Each object has its metadata beside it (a sidecar on
disk, headers in S3). The time in the key is when the webhook arrived, so a redelivered webhook would
compute a different key: identity is (sender, kind, MessageSid, index), a ``MediaRef``, and the Store, not
the key, is what makes a second delivery a no-op.

Nothing here touches storage: these are the pure rules every store (gateway.storage.filesystem,
gateway.storage.s3) applies before it does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

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
