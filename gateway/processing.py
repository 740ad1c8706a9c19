"""One media item, from its URL to a stored object and one sentence of reply.

Audio goes through AudioService.ConvertToWav and is stored as the WAV it returns. Photos go through
VisionService.DetectFaces and are stored as the original bytes, untouched, only when a face was found.
Everything else is answered without being downloaded. Every failure ends in a sentence for the user
and an outcome for the log line; nothing here lets an exception reach the webhook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import grpc

from gateway import metrics, replies
from gateway.audio_client import AudioClient
from gateway.budget import Budget
from gateway.download import DownloadError, Failure, MediaDownloader
from gateway.message import InboundMessage, MediaItem
from gateway.media_memory import Claim, MediaMemory, MemoryBusy
from gateway.sender import mask_phone, redact_sender
from gateway.storage.base import Store, StoredObject
from gateway.storage.keys import AUDIO, IMAGES, MediaRef
from mediabot.v1 import audio_pb2, vision_pb2, vision_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})

# Pillow's format name (what the vision service detected) -> the content type the photo is stored as.
# MPO is how Pillow names the multi-picture JPEGs many phone cameras write: still a JPEG file.
_STORED_PHOTO_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

# Failures worth another attempt later. INVALID_ARGUMENT / RESOURCE_EXHAUSTED (bad or too large input) and
# NOT_FOUND, PERMISSION_DENIED, ... are answers about the input or the setup, not about the moment.
# UNKNOWN and INTERNAL are included: a service dying mid-call can surface as either, and a deterministic
# one still ends, in SPOOL_DIR/failed/ after SPOOL_GIVE_UP_AFTER_S.
_TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
})
# The media host's 5xx, timeouts and broken connections; Twilio keeps the media, so it will be there later.
_TRANSIENT_DOWNLOADS = frozenset({Failure.TIMEOUT, Failure.SERVER_ERROR, Failure.CONNECTION})

# The largest WAV the audio service returns for the 16 kHz mono the bot asks for: 15 minutes (its default
# AUDIO_MAX_DURATION_S) plus the one second its decoder may run over, and the 44-byte header. A voice note
# claims this much memory for the answer before it is converted (gateway.media_memory).
MAX_WAV_BYTES = 44 + (900 + 1) * 16000 * 2


@dataclass(frozen=True)
class ItemResult:
    reply: str
    # Short, stable word for logs and tests: saved, already_saved, no_face, unsupported, download_failed,
    # rejected (the service said the input was bad), unavailable, busy (no room in MEDIA_MEMORY_MB in time),
    # store_failed, out_of_time, error.
    outcome: str
    key: str | None = None
    detail: str = ""
    # True when trying again later may succeed (a dependency down or slow, storage unavailable, a 5xx or a
    # timeout from the media host, no time left): the spool keeps the item for the background worker.
    # False for final outcomes: saved, no face, undecodable, too large, unsupported, a URL we refuse.
    retryable: bool = False


class MediaProcessor:
    def __init__(
        self,
        *,
        downloader: MediaDownloader,
        store: Store,
        audio: AudioClient,
        vision: vision_pb2_grpc.VisionServiceStub,
        audio_timeout_s: float,
        vision_timeout_s: float,
        max_media_bytes: int,
        memory: MediaMemory | None = None,
    ) -> None:
        self._downloader = downloader
        self._store = store
        self._audio = audio
        self._vision = vision
        self._audio_timeout_s = audio_timeout_s
        self._vision_timeout_s = vision_timeout_s
        self._max_media_bytes = max_media_bytes
        # None: no bound (a unit test's processor); Services always gives one (MEDIA_MEMORY_MB).
        self._memory = memory

    def process(self, message: InboundMessage, item: MediaItem, budget: Budget, received_at: datetime) -> ItemResult:
        """Handle one item and write its log line; never raises."""
        started = time.monotonic()
        try:
            result = self._dispatch(message, item, budget, received_at)
        except Exception:  # the last line of defence: the user still gets a sentence, the log the traceback
            logger.exception(
                "media item failed unexpectedly",
                extra={"message_sid": message.message_sid, "media_index": item.index},
            )
            result = ItemResult(replies.INTERNAL_ERROR, "error", retryable=True)
        logger.info(
            "media item handled",
            extra={
                "message_sid": message.message_sid,
                "sender": mask_phone(message.sender_id),
                "media_index": item.index,
                "content_type": item.content_type,
                "outcome": result.outcome,
                "detail": result.detail,
                "retryable": result.retryable,
                # The key holds the full number (it is the sender's prefix): log only its file name.
                "stored_as": result.key.rsplit("/", 1)[-1] if result.key else None,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return result

    def _dispatch(self, message: InboundMessage, item: MediaItem, budget: Budget, received_at: datetime) -> ItemResult:
        content_type = item.content_type
        if message.message_type == "sticker":
            return ItemResult(replies.unsupported("stickers"), "unsupported")
        if content_type.startswith("audio/"):
            return self._audio_item(message, item, budget, received_at)
        if content_type in PHOTO_TYPES:
            return self._photo_item(message, item, budget, received_at)
        return ItemResult(replies.unsupported(_describe(content_type)), "unsupported")

    def _audio_item(
        self, message: InboundMessage, item: MediaItem, budget: Budget, received_at: datetime
    ) -> ItemResult:
        ref = MediaRef(message.sender_id, AUDIO, message.message_sid, item.index)
        if erased := self._drop_if_erased(ref, received_at, replies.VOICE):
            return erased
        stored = self._find(ref, replies.VOICE)
        if isinstance(stored, ItemResult):
            return stored
        if stored is not None:
            duration_ms = _int(stored.metadata, "audio", "duration_ms")
            return ItemResult(replies.saved_audio(duration_ms), "already_saved", stored.key)
        with self._claim(budget) as claim:
            # One claim for the voice note and the WAV it becomes, taken at once: an item never waits for
            # memory while holding some, so items cannot hold each other up.
            downloaded = self._download(item, budget, replies.VOICE, claim, extra_bytes=MAX_WAV_BYTES)
            if isinstance(downloaded, ItemResult):
                return downloaded
            size = len(downloaded)
            request = audio_pb2.ConvertToWavRequest(
                content_type=item.content_type,
                sample_rate_hz=16000,
                channels=1,
                request_id=f"{message.message_sid}/{item.index}",
            )
            converted = self._call(
                lambda timeout: self._audio.convert(downloaded, request, timeout=timeout),
                budget, self._audio_timeout_s, replies.VOICE,
            )
            del downloaded
            if isinstance(converted, ItemResult):
                return converted
            response = converted.response
            metadata = _common_metadata(message, item, received_at, size) | {
                "source": {"format": response.source_format, "codec": response.source_codec},
                "audio": {
                    "duration_ms": response.duration_ms,
                    "sample_rate_hz": response.sample_rate_hz,
                    "channels": response.channels,
                    "bits_per_sample": response.bits_per_sample,
                },
            }
            wav = converted.wav  # a view of the bytes gRPC received: stored without another copy
            return self._put(
                ref, wav, "audio/wav", metadata, received_at, replies.VOICE,
                lambda stored: replies.saved_audio(_int(stored.metadata, "audio", "duration_ms")),
            )

    def _photo_item(
        self, message: InboundMessage, item: MediaItem, budget: Budget, received_at: datetime
    ) -> ItemResult:
        ref = MediaRef(message.sender_id, IMAGES, message.message_sid, item.index)
        if erased := self._drop_if_erased(ref, received_at, replies.PHOTO):
            return erased
        stored = self._find(ref, replies.PHOTO)
        if isinstance(stored, ItemResult):
            return stored
        if stored is not None:
            return ItemResult(replies.saved_photo(_faces(stored)), "already_saved", stored.key)
        with self._claim(budget) as claim:
            downloaded = self._download(item, budget, replies.PHOTO, claim)
            if isinstance(downloaded, ItemResult):
                return downloaded
            request = vision_pb2.DetectFacesRequest(
                image=downloaded,
                content_type=item.content_type,
                request_id=f"{message.message_sid}/{item.index}",
            )
            detected = self._call(
                lambda timeout: self._vision.DetectFaces(request, timeout=timeout),
                budget, self._vision_timeout_s, replies.PHOTO,
            )
            del request  # the original bytes are what is stored; the message's copy can go
            if isinstance(detected, ItemResult):
                return detected
            if not detected.has_face:
                return ItemResult(replies.NO_FACE, "no_face")
            stored_type = _STORED_PHOTO_TYPES.get(detected.format)
            if stored_type is None:  # e.g. a GIF declared as image/jpeg: decodable, but not a type we keep
                return ItemResult(replies.PHOTO_FORMAT, "unsupported", detail=f"detected format {detected.format}")
            metadata = _common_metadata(message, item, received_at, len(downloaded)) | {
                "image": {"width": detected.width, "height": detected.height, "format": detected.format},
                "faces": [
                    {
                        "box": {"left": f.box.left, "top": f.box.top, "right": f.box.right, "bottom": f.box.bottom},
                        "confidence": round(f.confidence, 4),
                        # Which view of the photo found it (whole, a tile, sideways): see vision_service/views.py.
                        "view": f.view,
                    }
                    for f in detected.faces
                ],
                "views": detected.views,
                "model": {"name": detected.model_name, "version": detected.model_version},
                "min_confidence": round(detected.min_confidence, 4),
            }
            return self._put(
                ref, downloaded, stored_type, metadata, received_at, replies.PHOTO,
                lambda stored: replies.saved_photo(_faces(stored)),
            )

    def _claim(self, budget: Budget):  # noqa: ANN202 (a context manager of Claim or None)
        return self._memory.claim(budget) if self._memory is not None else nullcontext(None)

    def _find(self, ref: MediaRef, what: str) -> StoredObject | ItemResult | None:
        """The object a previous delivery stored (a replay is answered without downloading again)."""
        try:
            return self._store.find(ref)
        except OSError as error:
            reason = redact_sender(str(error), ref.sender_id)
            logger.error("could not read the store", extra={"message_sid": ref.message_sid, "error": reason})
            return ItemResult(replies.STORE_FAILED.format(what=what), "store_failed", detail=reason, retryable=True)

    def _drop_if_erased(self, ref: MediaRef, received_at: datetime, what: str) -> ItemResult | None:
        """A result when the sender erased their data after this item arrived (gateway.privacy): it is never
        stored, and what an attempt racing the erase stored for it is taken back. None: go on as usual.
        A store that cannot answer means "try again later", never "store anyway"."""
        try:
            erased_at = self._store.marker("erased", ref.sender_id)
            if erased_at is None or received_at > erased_at:
                return None
            stored = self._store.find(ref)
            if stored is not None:
                self._store.delete(stored.key)
        except OSError as error:
            reason = redact_sender(str(error), ref.sender_id)
            logger.error("could not check or apply an erasure", extra={"message_sid": ref.message_sid,
                                                                       "error": reason})
            return ItemResult(replies.STORE_FAILED.format(what=what), "store_failed", detail=reason, retryable=True)
        return ItemResult(replies.erased(what), "erased", detail="the sender erased their data after it arrived")

    def _download(
        self, item: MediaItem, budget: Budget, what: str, claim: Claim | None, extra_bytes: int = 0
    ) -> bytes | ItemResult:
        """The media's bytes; with a ``claim``, its size plus ``extra_bytes`` is claimed before the body is read."""
        if not item.url:
            return ItemResult(f"Sorry, I couldn't download your {what}.", "download_failed", detail="no MediaUrl")
        on_length = None if claim is None else (lambda size: claim.take(size + extra_bytes))
        try:
            with metrics.stage_timer("download"):
                return self._downloader.fetch(item.url, budget, on_length).data
        except MemoryBusy as error:
            # Not the media's fault: the process is busy with other large media. The spool tries it again.
            return ItemResult(replies.rpc_failed(what, grpc.StatusCode.UNAVAILABLE), "busy", detail=str(error),
                              retryable=True)
        except DownloadError as error:
            reply = replies.download_failed(what, error.failure, self._max_media_bytes)
            transient = error.failure in _TRANSIENT_DOWNLOADS
            return ItemResult(reply, "download_failed", detail=str(error), retryable=transient)

    def _call(self, call: Callable[[float], T], budget: Budget, timeout_s: float, what: str) -> T | ItemResult:
        """``call(timeout)``'s answer, or the ItemResult its gRPC error means."""
        timeout = budget.cap(timeout_s)
        if timeout <= 0:
            return ItemResult(replies.OUT_OF_TIME.format(what=what), "out_of_time", retryable=True)
        try:
            with metrics.stage_timer("convert" if what == replies.VOICE else "detect"):
                return call(timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            outcome = {
                grpc.StatusCode.INVALID_ARGUMENT: "rejected",
                grpc.StatusCode.RESOURCE_EXHAUSTED: "rejected",
                grpc.StatusCode.UNAVAILABLE: "unavailable",
                grpc.StatusCode.DEADLINE_EXCEEDED: "unavailable",
            }.get(code, "error")
            detail = f"{code.name if code else '?'}: {details}"
            reply = replies.rpc_failed(what, code)
            return ItemResult(reply, outcome, detail=detail, retryable=code in _TRANSIENT_CODES)

    def _put(
        self,
        ref: MediaRef,
        data: bytes | memoryview,
        content_type: str,
        metadata: dict[str, object],
        received_at: datetime,
        what: str,
        saved_reply: Callable[[StoredObject], str],
    ) -> ItemResult:
        try:
            with metrics.stage_timer("store"):
                stored, created = self._store.put(
                    ref, data, content_type=content_type, metadata=metadata, received_at=received_at
                )
        except OSError as error:
            reason = redact_sender(str(error), ref.sender_id)
            logger.error("could not store media", extra={"message_sid": ref.message_sid, "error": reason})
            return ItemResult(replies.STORE_FAILED.format(what=what), "store_failed", detail=reason, retryable=True)
        # An erase that ran while this item was downloaded or converted did not see this object (it was not
        # there yet): look again now that it is, and take it back.
        if erased := self._drop_if_erased(ref, received_at, what):
            return erased
        return ItemResult(saved_reply(stored), "saved" if created else "already_saved", stored.key)


def _common_metadata(message: InboundMessage, item: MediaItem, received_at: datetime, size: int) -> dict[str, object]:
    return {
        "message_sid": message.message_sid,
        "media_index": item.index,
        "sender_id": message.sender_id,
        "profile_name": message.profile_name,
        "received_at": received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "original": {"content_type": item.content_type, "size": size},
    }


def _int(metadata: object, section: str, field: str) -> int:
    value = metadata.get(section, {}).get(field, 0) if isinstance(metadata, dict) else 0
    return int(value) if isinstance(value, (int, float)) else 0


def _faces(stored: StoredObject) -> int:
    faces = stored.metadata.get("faces")
    return len(faces) if isinstance(faces, list) else 0


def _describe(content_type: str) -> str:
    """What the user sent, in words, for the "I can't keep ..." reply."""
    if content_type.startswith("video/"):
        return "videos"
    if content_type in ("text/vcard", "text/x-vcard", "text/directory"):
        return "contact cards"
    if content_type.startswith("image/"):
        return "this kind of picture"
    if content_type.startswith(("application/", "text/")):
        return "documents"
    return "this kind of file"
