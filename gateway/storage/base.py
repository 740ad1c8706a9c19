"""What every store is: the Store protocol, the objects it returns, and the errors it raises.

The interface is kept to what S3 can do cheaply (put, get, list by prefix, one small pointer object per
ref, written with a conditional put), so the S3 store (gateway.storage.s3) can implement it without a
database, as the filesystem store (gateway.storage.filesystem) does with files and flock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.storage.keys import MediaRef


class StoreBusy(OSError):
    """Another delivery of the same media held the lock for longer than we may wait."""


class StoreUnavailable(OSError):
    """The storage backend could not be reached or refused a request; the message says which and why.

    An OSError like the filesystem's own errors, so the webhook answers "couldn't save" for both stores alike.
    """


class StoreStartupError(RuntimeError):
    """The configured storage cannot be used (unreachable, refused credentials, no bucket). The browsing command
    stops on it; the gateway and the worker keep running and check again on first use (gateway.storage.s3).

    ``status`` is the word /readyz reports for it: UNAVAILABLE, ACCESS_DENIED, NO_BUCKET, NO_CONDITIONAL_WRITES,
    MISSING (MEDIA_ROOT) or ERROR."""

    def __init__(self, message: str, status: str = "ERROR") -> None:
        super().__init__(message)
        self.status = status



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


def newest_first(objects: list[StoredObject]) -> list[StoredObject]:
    """Sorted by the key's file name, which starts with the UTC receive time (then MessageSid and index)."""
    return sorted(objects, key=lambda obj: obj.key.rsplit("/", 1)[1], reverse=True)

