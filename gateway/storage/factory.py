"""``open_store(settings)``: the store STORAGE names, opened and checked (at once, or on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.storage.base import Store, StoreStartupError
from gateway.storage.filesystem import FilesystemStore

if TYPE_CHECKING:
    from gateway.config import Settings


def open_store(settings: Settings, *, for_writing: bool = True, check_on_first_use: bool = False) -> Store:
    """The store STORAGE names, ready to use; StoreStartupError with a readable message if it cannot be.

    ``for_writing=False`` (the browsing command) writes no probe (no store creates a missing bucket).
    ``check_on_first_use`` (the gateway, the worker): an S3 server that cannot be used yet is not an error
    here; the store checks again on use and fails those uses as an outage until it passes (gateway.storage.s3).
    """
    if settings.storage == "minio":
        from gateway.storage.s3 import MinioStore  # imported only when used: the filesystem needs no S3 SDK

        return MinioStore.connect(settings, for_writing=for_writing, check_on_first_use=check_on_first_use)
    if settings.storage == "filesystem":
        try:
            return FilesystemStore(settings.media_root)
        except OSError as error:
            raise StoreStartupError(f"MEDIA_ROOT {settings.media_root} cannot be used: {error}", status="MISSING") from None
    raise StoreStartupError(f"no store for STORAGE={settings.storage!r}")

