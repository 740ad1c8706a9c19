"""The Store interface on an S3 server (MinIO in compose and k8s; SeaweedFS in the tests), with the minio SDK.

Objects in the bucket: the media under the same keys as on disk (gateway.storage.keys), and the store's own
bookkeeping under one prefix of its own, so that a sender's folder, as people browse it in the MinIO console,
holds their voice notes and photos and nothing else:

    whatsapp/{sender}/{kind}/{stamp}_{MessageSid}_{index}.{ext}       the media; Content-Type; metadata as x-amz-meta-*
    .mediabot/claims/whatsapp/{sender}/{kind}/{MessageSid}_{index}    the claim: the key this ref is stored under
    .mediabot/markers/{name}/whatsapp/{sender}                         a per-sender privacy marker (gateway.storage.keys)
and the same with ``telegram/{user_id}`` in place of ``whatsapp/{sender}`` for Telegram senders (gateway.sender).
    .mediabot/metadata/{media key}.json                               only for metadata over S3's 2 KB (gateway.storage.s3_metadata)

Buckets written before this layout also hold ``whatsapp/{sender}/{kind}/.{MessageSid}_{index}.ref`` claims and
``{media key}.json`` overflow objects beside the media. Nothing moves them: the overflow objects are still
read (the media's headers name them), the old claims are no longer read or written (README, "Storage").

Idempotency. The key holds the time the webhook arrived, so a redelivery would compute a different one;
what it shares with the first delivery is the ref (sender, kind, MessageSid, index), and the claim object's
name is made from the ref alone. ``put`` first looks for the claim (check before write). Without one, it
creates it with a conditional write, ``If-None-Match: *``: of any number of concurrent deliveries, on any
number of gateway replicas, exactly one succeeds and the others get 412 Precondition Failed, read the
claim, and from then on use the key written in it, so even a race ends in one object. The winner then
writes the media under that key; the others wait for it to appear and return it (created=False). If it
does not appear (the claimant died between claim and media, or stalls past ``claim_wait_s``), whoever
finds the claim writes the media under the claimed key itself: still one object, since an S3 PUT replaces
a key atomically. The claim carries a random token, so a claim whose creation was retried by the HTTP
pool after a lost response is recognised as one's own rather than waited on.

Nothing is half-written: an S3 object appears only complete (single PUT, or a multipart upload when it is
completed; the SDK aborts the upload when a part fails), the media object is written last, and readers
count only media objects, so a claim or overflow object without its media is invisible.

Start-up checks on first use. ``connect(check_on_first_use=True)`` (the gateway and the worker) tries the
checks (bucket there and listable, conditional writes honoured, the RETENTION_DAYS lifecycle rule) at once,
but a failure does not stop the process: every use of the store tries them again (at most every few seconds,
backing off to ``_RECHECK_MAX_S``) and, until they pass, raises StoreUnavailable, which the webhook answers
like any storage outage (the item stays in the intake, "I'll save it shortly"). An unreachable server is a
WARNING line each try; a server that answers but refuses the credentials, has no bucket, or ignores
conditional writes is an ERROR line each try, and /readyz's "storage" says which (``check``).

Timeouts and retries are the SDK's: its urllib3 PoolManager, built here with our timeouts and a
``urllib3.Retry`` (connection errors, read errors on idempotent requests, 500/502/503/504 with backoff).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar, cast

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from gateway.config import Settings
from gateway.storage import s3_metadata
from gateway.storage.base import StoreBusy, StoredObject, StoreStartupError, StoreUnavailable, newest_first
from gateway.storage.keys import (
    CHANNEL_FOLDERS, EXTENSIONS, InvalidKey, MediaRef, check_marker, is_media_key, is_sender_id, marker_text,
    media_key, parse_key, parse_marker, sender_of_folder, sender_prefix,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# Objects above this go through the SDK's multipart upload in parts of this size (a 15-minute WAV, about 29 MB,
# is 4 parts); smaller ones are one PUT. 5 MiB is S3's minimum part size.
PART_SIZE = 8 * MIB
# How long a delivery that lost the claim waits for the winner's media before writing it itself.
CLAIM_WAIT_S = 5.0
_CLAIM_POLL_S = 0.05
# Responses worth retrying: the server or a proxy in front of it is overloaded or restarting.
_RETRY_STATUSES = (500, 502, 503, 504)
# S3 error codes that mean the credentials, not the server, are the problem.
_AUTH_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken"})


# Between tries of the start-up checks while they fail (first use, then on every use): doubling up to this.
_RECHECK_FIRST_S = 0.5
_RECHECK_MAX_S = 10.0


def http_pool(connect_timeout_s: float, read_timeout_s: float, retries: int) -> urllib3.PoolManager:
    """The SDK's HTTP client, as minio's own default but with our timeouts and retries.

    No ca_certs: urllib3 then uses the system trust store, which honours SSL_CERT_FILE for a private CA.
    raise_on_status=False hands the last 5xx answer to the SDK, which turns it into a readable S3Error.
    """
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        retries=urllib3.Retry(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=_RETRY_STATUSES,
            raise_on_status=False,
        ),
    )


@dataclass(frozen=True)
class _Claim:
    key: str
    token: str
    age_s: float  # by the server's clock: its Date minus the claim's Last-Modified


@dataclass
class _PendingChecks:
    """The start-up checks of a store opened with ``check_on_first_use``, until they pass."""

    for_writing: bool
    retention_days: int | None
    problem: str = "not checked yet"
    status: str = "UNAVAILABLE"
    failures: int = 0
    next_try: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _after_start_up_checks(method: _Method) -> _Method:
    """Every Store method: the start-up checks pass first (StoreUnavailable while they do not)."""

    @functools.wraps(method)
    def checked(self: MinioStore, *args: Any, **kwargs: Any) -> Any:
        self.ensure_checked()
        return method(self, *args, **kwargs)

    return cast(_Method, checked)


class MinioStore:
    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        health_client: Minio | None = None,
        pools: tuple[urllib3.PoolManager, ...] = (),
        claim_wait_s: float = CLAIM_WAIT_S,
        description: str = "",
    ) -> None:
        self._client = client
        self._health = health_client or client
        self._bucket = bucket
        self._pools = pools
        self._claim_wait_s = claim_wait_s
        self._description = description or f"bucket {bucket!r}"
        # True once a bucket lifecycle rule expires old media (RETENTION_DAYS): the worker need not sweep.
        self.expires_by_itself = False
        # Set by connect(check_on_first_use=True) until the start-up checks pass; None: checked (or not asked).
        self._pending: _PendingChecks | None = None

    @classmethod
    def connect(cls, settings: Settings, *, for_writing: bool = True, claim_wait_s: float = CLAIM_WAIT_S,
                check_on_first_use: bool = False) -> MinioStore:
        """A store on the configured server, checked now: StoreStartupError if unusable. With
        ``check_on_first_use`` (the gateway, the worker) a failed check does not raise: it is logged and
        tried again on use (see the module docstring)."""
        pool = http_pool(settings.minio_connect_timeout_s, settings.minio_read_timeout_s, settings.minio_retries)
        # Readiness probes must answer within their own deadline, not after the pool's retries.
        health_pool = http_pool(settings.health_check_timeout_s, settings.health_check_timeout_s, 0)

        def client(http: urllib3.PoolManager) -> Minio:
            return Minio(
                settings.minio_endpoint,
                access_key=settings.minio_access_key,
                secret_key=settings.minio_secret_key,
                secure=settings.minio_secure,
                http_client=http,
            )

        scheme = "https" if settings.minio_secure else "http"
        store = cls(
            client(pool),
            settings.minio_bucket,
            health_client=client(health_pool),
            pools=(pool, health_pool),
            claim_wait_s=claim_wait_s,
            description=f"bucket {settings.minio_bucket!r} at {scheme}://{settings.minio_endpoint}",
        )
        retention_days = settings.retention_days if for_writing else None
        if check_on_first_use:
            store._pending = _PendingChecks(for_writing=for_writing, retention_days=retention_days)
            try:
                store.ensure_checked()
            except StoreUnavailable:
                pass  # logged; the next use tries again
            return store
        try:
            store.prepare(for_writing=for_writing)
        except BaseException:
            store.close()
            raise
        if retention_days is not None:
            store.expires_by_itself = store.set_retention(retention_days)
        return store

    def ensure_checked(self) -> None:
        """Run the start-up checks if they have not passed yet (not more often than the back-off allows);
        StoreUnavailable, saying why, while they fail. Free once they have passed."""
        pending = self._pending
        if pending is None:
            return
        if not pending.lock.acquire(blocking=False):  # another thread is checking right now
            raise StoreUnavailable(pending.problem)
        try:
            if self._pending is None:
                return
            now = time.monotonic()
            if now < pending.next_try:
                raise StoreUnavailable(pending.problem)
            try:
                self.prepare(for_writing=pending.for_writing)
            except StoreStartupError as error:
                pending.failures += 1
                pending.problem, pending.status = str(error), error.status
                retry_s = min(_RECHECK_MAX_S, _RECHECK_FIRST_S * 2 ** (pending.failures - 1))
                pending.next_try = now + retry_s
                fields = {"error": str(error), "storage": error.status, "retry_in_s": retry_s}
                if error.status == "UNAVAILABLE":
                    logger.warning("storage unreachable: media waits in the intake until it answers", extra=fields)
                else:
                    logger.error("storage refuses the gateway: media waits in the intake until this is fixed",
                                 extra=fields)
                raise StoreUnavailable(str(error)) from None
            if pending.retention_days is not None:
                self.expires_by_itself = self.set_retention(pending.retention_days)
            self._pending = None
            if pending.failures:
                logger.info("storage usable again", extra={"after_failed_checks": pending.failures})
        finally:
            pending.lock.release()

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def client(self) -> Minio:
        """The SDK client this store uses (for tools and tests that look at the bucket directly)."""
        return self._client

    def prepare(self, *, for_writing: bool = True) -> None:
        """Make sure the bucket is there and usable; with ``for_writing``, prove conditional writes too.

        The bucket is never created here: the gateway runs as a MinIO user limited to this one bucket (no
        s3:CreateBucket), and the bucket is made, with that user and its policy, by whoever deploys it
        (compose's minio-init service, the k8s Job minio-init, or a person with ``mc mb``).
        """
        try:
            if not self._client.bucket_exists(self._bucket):
                raise StoreStartupError(
                    f"{self._description} does not exist (MINIO_BUCKET): the gateway does not create it; "
                    "create it first (compose's minio-init service and the k8s Job minio-init do)",
                    status="NO_BUCKET",
                )
            # bucket_exists proves HEAD; listing is what find() and list() need.
            next(iter(self._client.list_objects(self._bucket, prefix="whatsapp/")), None)
            if for_writing:
                self._prove_conditional_writes()
        except StoreStartupError:
            raise
        except S3Error as error:
            raise StoreStartupError(self._explain(error),
                                    status="ACCESS_DENIED" if error.code in _AUTH_CODES else "ERROR") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as error:
            raise StoreStartupError(
                f"cannot reach the S3 server for {self._description} (MINIO_ENDPOINT, MINIO_SECURE): {_reason(error)}",
                status="UNAVAILABLE",
            ) from None

    # -- the Store interface ---------------------------------------------------------------------------

    @_after_start_up_checks
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
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self._claim_wait_s
        with self._errors("store"):
            while True:
                claim = self._read_claim(ref)
                if claim is None:
                    if self._create_claim(ref, key, token):
                        return self._write(key, data, content_type, metadata), True
                    if time.monotonic() >= deadline:
                        raise StoreBusy("the claim for this media keeps changing; giving up for now")
                    continue  # another delivery claimed it first: read its claim
                if claim.token == token:
                    return self._write(claim.key, data, content_type, metadata), True
                existing = self._load(claim.key)
                if existing is not None:
                    return existing, False
                if claim.age_s >= self._claim_wait_s or time.monotonic() >= deadline:
                    return self._take_over(ref, claim, data, content_type, metadata), True
                time.sleep(_CLAIM_POLL_S)

    @_after_start_up_checks
    def find(self, ref: MediaRef) -> StoredObject | None:
        with self._errors("look up"):
            claim = self._read_claim(ref)
            return None if claim is None else self._load(claim.key)

    @_after_start_up_checks
    def get(self, key: str) -> bytes:
        if not is_media_key(key):
            raise InvalidKey("not a media key")
        with self._errors("read"):
            try:
                response = self._client.get_object(self._bucket, key)
            except S3Error as error:
                if error.code == "NoSuchKey":
                    raise KeyError(key) from None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    @_after_start_up_checks
    def list(self, sender_id: str, kind: str | None = None) -> list[StoredObject]:
        if not is_sender_id(sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        kinds = [kind] if kind is not None else sorted(EXTENSIONS)
        found: list[StoredObject] = []
        with self._errors("list"):
            for one_kind in kinds:
                if one_kind not in EXTENSIONS:
                    raise InvalidKey(f"unknown kind {one_kind!r}")
                for item in self._client.list_objects(self._bucket, prefix=f"{sender_prefix(sender_id)}/{one_kind}/"):
                    # One HEAD per object for its metadata: S3 listings carry none (MinIO's extension aside).
                    if item.object_name and is_media_key(item.object_name):
                        stored = self._load(item.object_name)
                        if stored is not None:
                            found.append(stored)
        return newest_first(found)

    @_after_start_up_checks
    def senders(self) -> list[str]:
        found = []
        with self._errors("list"):
            for channel in CHANNEL_FOLDERS:
                for item in self._client.list_objects(self._bucket, prefix=f"{channel}/"):
                    if item.is_dir and item.object_name:
                        name = item.object_name.removeprefix(f"{channel}/").rstrip("/")
                        if (sender := sender_of_folder(channel, name)) is not None:
                            found.append(sender)
        return sorted(found)

    @_after_start_up_checks
    def holds_any(self, sender_id: str) -> bool:
        if not is_sender_id(sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        with self._errors("list"):
            return any(
                is_media_key(item.object_name or "")
                for item in self._client.list_objects(self._bucket, prefix=f"{sender_prefix(sender_id)}/", recursive=True)
            )

    @_after_start_up_checks
    def delete(self, key: str) -> bool:
        ref, _ = parse_key(key)
        with self._errors("delete"):
            existed = self._load(key) is not None
            claim = self._read_claim_or_none(ref)
            names = [key, overflow_object(key), _legacy_overflow_object(key)]
            if claim is not None and claim.key == key:
                names.append(claim_name(ref))
            self._remove(names)
        return existed

    @_after_start_up_checks
    def erase(self, sender_id: str) -> int:
        if not is_sender_id(sender_id):
            raise InvalidKey("sender id is not a safe path segment")
        # The trailing slash keeps 1555123's erase away from 15551234's objects.
        folder = sender_prefix(sender_id)
        prefixes = [
            f"{folder}/",  # media, and the .ref/.json objects older buckets keep beside it
            f"{BOOKKEEPING_PREFIX}claims/{folder}/",
            f"{BOOKKEEPING_PREFIX}metadata/{folder}/",
        ]
        with self._errors("erase"):
            names = [
                item.object_name
                for prefix in prefixes
                for item in self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
                if item.object_name
            ]
            self._remove(names)
        return sum(1 for name in names if is_media_key(name))

    @_after_start_up_checks
    def expire(self, before: datetime) -> int:
        gone = 0
        with self._errors("list"):
            keys = [
                item.object_name
                for channel in CHANNEL_FOLDERS
                for item in self._client.list_objects(self._bucket, prefix=f"{channel}/", recursive=True)
                if item.object_name and is_media_key(item.object_name)
            ]
        for key in keys:
            if parse_key(key)[1] < before and self.delete(key):
                gone += 1
        return gone

    @_after_start_up_checks
    def set_marker(self, name: str, sender_id: str, at: datetime) -> None:
        body = marker_text(at).encode("ascii")
        with self._errors("store"):
            self._client.put_object(
                self._bucket, marker_object(name, sender_id), io.BytesIO(body), len(body), content_type="text/plain"
            )

    @_after_start_up_checks
    def marker(self, name: str, sender_id: str) -> datetime | None:
        with self._errors("look up"):
            try:
                response = self._client.get_object(self._bucket, marker_object(name, sender_id))
            except S3Error as error:
                if error.code == "NoSuchKey":
                    return None
                raise
            try:
                return parse_marker(response.read(256).decode("ascii", errors="replace"))
            finally:
                response.close()
                response.release_conn()

    @_after_start_up_checks
    def clear_marker(self, name: str, sender_id: str) -> None:
        with self._errors("delete"):
            self._client.remove_object(self._bucket, marker_object(name, sender_id))

    @_after_start_up_checks
    def markers(self, name: str) -> dict[str, datetime]:
        prefix = marker_object(name, "0").rsplit("/", 2)[0] + "/"
        senders = []
        with self._errors("list"):
            for channel in CHANNEL_FOLDERS:
                for item in self._client.list_objects(self._bucket, prefix=f"{prefix}{channel}/"):
                    if item.object_name and (sender := sender_of_folder(channel, item.object_name.rsplit("/", 1)[1])):
                        senders.append(sender)
        found = {}
        for sender in senders:
            if (at := self.marker(name, sender)) is not None:
                found[sender] = at
        return found

    def set_retention(self, days: int) -> bool:
        """Expire objects older than ``days`` with a bucket lifecycle rule; False (and the worker sweeps
        instead) where the server or this user's policy does not allow it. Never stops start-up."""
        config = LifecycleConfig([
            Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=RETENTION_RULE_ID, expiration=Expiration(days=days))
        ])
        try:
            self._client.set_bucket_lifecycle(self._bucket, config)
            current = self._client.get_bucket_lifecycle(self._bucket)
        except (S3Error, MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            logger.warning("the S3 server did not take a lifecycle rule; the worker will expire old media",
                           extra={"retention_days": days, "error": _reason(error)})
            return False
        rules = current.rules if current is not None else []
        taken = any(rule.rule_id == RETENTION_RULE_ID and rule.expiration is not None
                    and rule.expiration.days == days for rule in rules)
        if taken:
            logger.info("bucket lifecycle rule expires media", extra={"retention_days": days})
        else:
            logger.warning("the S3 server did not keep the lifecycle rule; the worker will expire old media",
                           extra={"retention_days": days})
        return taken

    def check(self) -> str:
        try:
            live = "SERVING" if self._health.bucket_exists(self._bucket) else "NO_BUCKET"
        except S3Error as error:
            live = "ACCESS_DENIED" if error.code in _AUTH_CODES else "ERROR"
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            live = "UNAVAILABLE"
        pending = self._pending
        if live != "SERVING" or pending is None:
            return live
        # The bucket answers but the start-up checks have not passed yet: try them (within their back-off),
        # so the store is ready before the next webhook needs it.
        try:
            self.ensure_checked()
        except StoreUnavailable:
            return pending.status
        return "SERVING"

    def close(self) -> None:
        for pool in self._pools:
            pool.clear()

    # -- internals -------------------------------------------------------------------------------------

    def _read_claim(self, ref: MediaRef) -> _Claim | None:
        name = claim_name(ref)
        try:
            response = self._client.get_object(self._bucket, name)
        except S3Error as error:
            if error.code == "NoSuchKey":
                return None
            raise
        try:
            body = response.read(4096).decode("ascii", errors="replace")
            age_s = _age_s(response.headers)
        finally:
            response.close()
            response.release_conn()
        key, _, token = body.strip().partition("\n")
        try:
            claimed_ref, _ = parse_key(key)
        except InvalidKey:
            claimed_ref = None
        if claimed_ref != ref:
            raise StoreUnavailable(f"the claim object {name} does not name a key of this media; delete it to retry")
        return _Claim(key=key, token=token.strip(), age_s=age_s)

    def _read_claim_or_none(self, ref: MediaRef) -> _Claim | None:
        """The claim, or None when it is missing or damaged (deleting must not stop on a damaged claim)."""
        try:
            return self._read_claim(ref)
        except StoreUnavailable:
            return None

    def _remove(self, names: list[str]) -> None:
        """Delete objects in batches of S3's 1,000; a missing one is not an error (S3 says so itself)."""
        for start in range(0, len(names), 1000):
            batch = [DeleteObject(name) for name in names[start:start + 1000]]
            errors = list(self._client.remove_objects(self._bucket, batch))
            if errors:
                first = errors[0]
                raise StoreUnavailable(f"could not delete {len(errors)} object(s) in {self._description}: "
                                       f"{first.code}: {first.message}")

    def _create_claim(self, ref: MediaRef, key: str, token: str) -> bool:
        """True if this call created the claim; False if one exists (or is being created) already."""
        try:
            _put_if_absent(self._client, self._bucket, claim_name(ref), f"{key}\n{token}\n".encode("ascii"))
        except S3Error as error:
            # 409 ConditionalRequestConflict: another conditional write to the same name is in flight (AWS).
            if error.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def _take_over(
        self, ref: MediaRef, claim: _Claim, data: bytes, content_type: str, metadata: Mapping[str, object]
    ) -> StoredObject:
        _, claimed_at = parse_key(claim.key)
        if media_key(ref, claimed_at, content_type) != claim.key:
            raise StoreUnavailable(f"this media was claimed as {claim.key.rsplit('.', 1)[-1]}, not {content_type}")
        logger.warning(
            "writing media claimed by another delivery that did not finish",
            extra={"message_sid": ref.message_sid, "media_index": ref.index, "claim_age_s": round(claim.age_s, 1)},
        )
        return self._write(claim.key, data, content_type, metadata)

    def _write(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, object]) -> StoredObject:
        full: dict[str, object] = {
            **metadata,
            "sha256": hashlib.sha256(data).hexdigest(),
            "stored_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for reserved in ("key", "content_type", "size"):  # the object itself says these
            full.pop(reserved, None)
        headers, overflow = s3_metadata.encode(full, overflow_object(key))
        if overflow:
            body = json.dumps(overflow, ensure_ascii=False).encode()
            self._client.put_object(
                self._bucket, overflow_object(key), io.BytesIO(body), len(body), content_type="application/json"
            )
        self._client.put_object(
            self._bucket, key, io.BytesIO(data), len(data),
            content_type=content_type, metadata=headers, part_size=PART_SIZE,  # type: ignore[arg-type]
        )
        return StoredObject(
            key=key, content_type=content_type, size=len(data),
            metadata={**full, "key": key, "content_type": content_type, "size": len(data)},
        )

    def _load(self, key: str) -> StoredObject | None:
        try:
            stat = self._client.stat_object(self._bucket, key)
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise
        fields, overflow_key = s3_metadata.decode(stat.metadata or {})
        if overflow_key in (overflow_object(key), _legacy_overflow_object(key)):
            fields.update(self._overflow(overflow_key))
        content_type = stat.content_type or ""
        size = int(stat.size or 0)
        return StoredObject(
            key=key, content_type=content_type, size=size,
            metadata={**fields, "key": key, "content_type": content_type, "size": size},
        )

    def _overflow(self, name: str) -> dict[str, object]:
        """The fields kept beside the media; none if that object was deleted by hand (the media still counts)."""
        try:
            response = self._client.get_object(self._bucket, name)
        except S3Error as error:
            if error.code == "NoSuchKey":
                logger.warning("metadata object is missing", extra={"object": name.rsplit("/", 1)[-1]})
                return {}
            raise
        try:
            extra = json.loads(response.read())
        except ValueError:
            extra = None
        finally:
            response.close()
            response.release_conn()
        return extra if isinstance(extra, dict) else {}

    def _prove_conditional_writes(self) -> None:
        """Refuse to start on a server that ignores If-None-Match: the claim, and so idempotency, rests on it.

        AWS S3 and MinIO (the 2025 release compose and k8s run) honour it on PutObject, SeaweedFS 4.x too; a
        server that ignores it would let a racing replay store a second object without any error, so fail
        loudly instead.
        """
        probe = f"{BOOKKEEPING_PREFIX}probe-{uuid.uuid4().hex}"
        _put_if_absent(self._client, self._bucket, probe, b"probe\n")
        try:
            _put_if_absent(self._client, self._bucket, probe, b"probe\n")
        except S3Error as error:
            if error.code != "PreconditionFailed":
                raise
        else:
            raise StoreStartupError(
                f"the S3 server for {self._description} ignores conditional writes (If-None-Match: *), which the "
                "store needs to keep one object per media item; upgrade it",
                status="NO_CONDITIONAL_WRITES",
            )
        finally:
            try:
                self._client.remove_object(self._bucket, probe)
            except (MinioException, urllib3.exceptions.HTTPError, OSError):
                logger.warning("could not remove the start-up probe object", extra={"object": probe})

    def _explain(self, error: S3Error) -> str:
        if error.code == "InvalidAccessKeyId":
            return f"the S3 server for {self._description} does not know MINIO_ACCESS_KEY"
        if error.code == "SignatureDoesNotMatch":
            return f"the S3 server for {self._description} refused MINIO_SECRET_KEY for MINIO_ACCESS_KEY"
        if error.code in _AUTH_CODES:
            return f"the S3 server for {self._description} refused access with MINIO_ACCESS_KEY ({error.code})"
        return f"the S3 server for {self._description} answered {error.code}: {error.message}"

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """SDK and network errors as StoreUnavailable (an OSError), which the webhook answers with "couldn't save"."""
        try:
            yield
        except S3Error as error:
            detail = f"{error.code}: {error.message}"
            raise StoreUnavailable(f"could not {action} in {self._description}: {detail}") from error
        except (MinioException, urllib3.exceptions.HTTPError) as error:
            raise StoreUnavailable(f"could not {action} in {self._description}: {_reason(error)}") from error


# The store's own objects, kept apart from the media so a sender's prefix holds media only.
BOOKKEEPING_PREFIX = ".mediabot/"
RETENTION_RULE_ID = "mediabot-retention"


def claim_name(ref: MediaRef) -> str:
    """The claim object of ``ref``, under the sender's path in the bookkeeping prefix (not beside the media)."""
    return f"{BOOKKEEPING_PREFIX}claims/{sender_prefix(ref.sender_id)}/{ref.kind}/{ref.message_sid}_{ref.index}"


def marker_object(name: str, sender_id: str) -> str:
    """A per-sender marker (gateway.storage.keys.MARKERS), in the bookkeeping prefix like the claims."""
    check_marker(name, sender_id)
    return f"{BOOKKEEPING_PREFIX}markers/{name}/{sender_prefix(sender_id)}"


def overflow_object(key: str) -> str:
    """Where the metadata of media ``key`` goes when it does not fit in S3's 2 KB of headers."""
    return f"{BOOKKEEPING_PREFIX}metadata/{key}.json"


def _legacy_overflow_object(key: str) -> str:
    """Where buckets written before the bookkeeping prefix keep the overflow metadata: beside the media."""
    return f"{key}.json"


def _put_if_absent(client: Minio, bucket: str, name: str, body: bytes) -> None:
    """A single-part PutObject with If-None-Match: *; S3Error PreconditionFailed when ``name`` exists.

    minio 7.2's public put_object cannot send request headers other than metadata (it would turn
    If-None-Match into x-amz-meta-if-none-match), so this calls the single-part PutObject that put_object
    itself uses, which sends headers as given and is signed and retried like every other request.
    pyproject pins minio below 7.3 for this; tests/gateway/test_store.py proves the 412 on a real server.
    """
    client._put_object(  # noqa: SLF001
        bucket, name, body, headers={"If-None-Match": "*", "Content-Type": "text/plain; charset=us-ascii"}
    )


def _age_s(headers: Mapping[str, str]) -> float:
    """How long ago the object was written, by the server's own clock (so gateway clock skew cannot matter)."""
    try:
        now = parsedate_to_datetime(headers["Date"])
        written = parsedate_to_datetime(headers["Last-Modified"])
    except (KeyError, TypeError, ValueError):
        return 0.0  # unknown: treat as fresh, i.e. wait for its writer
    return max(0.0, (now - written).total_seconds())


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # urllib3's MaxRetryError wraps the socket or TLS error
    text = str(reason or error)
    if "SSL" in text or "ssl" in text:
        text += " (is MINIO_SECURE right for this server?)"
    return text
