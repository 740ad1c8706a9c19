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
from dataclasses import dataclass
from datetime import datetime

import grpc

from gateway import metrics, replies
from gateway.budget import Budget
from gateway.download import DownloadError, Failure, MediaDownloader
from gateway.inbound import InboundMessage, MediaItem
from gateway.sender import mask_phone, redact_sender
from gateway.store import AUDIO, IMAGES, MediaRef, Store, StoredObject
from mediabot.v1 import audio_pb2, audio_pb2_grpc, vision_pb2, vision_pb2_grpc

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ItemResult:
    reply: str
    # Short, stable word for logs and tests: saved, already_saved, no_face, unsupported, download_failed,
    # rejected (the service said the input was bad), unavailable, store_failed, out_of_time, error.
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
        audio: audio_pb2_grpc.AudioServiceStub,
        vision: vision_pb2_grpc.VisionServiceStub,
        audio_timeout_s: float,
        vision_timeout_s: float,
        max_media_bytes: int,
    ) -> None:
        self._downloader = downloader
        self._store = store
        self._audio = audio
        self._vision = vision
        self._audio_timeout_s = audio_timeout_s
        self._vision_timeout_s = vision_timeout_s
        self._max_media_bytes = max_media_bytes

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
        stored = self._find(ref, replies.VOICE)
        if isinstance(stored, ItemResult):
            return stored
        if stored is not None:
            duration_ms = _int(stored.metadata, "audio", "duration_ms")
            return ItemResult(replies.saved_audio(duration_ms), "already_saved", stored.key)
        downloaded = self._download(item, budget, replies.VOICE)
        if isinstance(downloaded, ItemResult):
            return downloaded
        request = audio_pb2.ConvertToWavRequest(
            audio=downloaded,
            content_type=item.content_type,
            sample_rate_hz=16000,
            channels=1,
            request_id=f"{message.message_sid}/{item.index}",
        )
        converted = self._call(self._audio.ConvertToWav, request, budget, self._audio_timeout_s, replies.VOICE)
        if isinstance(converted, ItemResult):
            return converted
        metadata = _common_metadata(message, item, received_at, len(downloaded)) | {
            "source": {"format": converted.source_format, "codec": converted.source_codec},
            "audio": {
                "duration_ms": converted.duration_ms,
                "sample_rate_hz": converted.sample_rate_hz,
                "channels": converted.channels,
                "bits_per_sample": converted.bits_per_sample,
            },
        }
        return self._put(
            ref, converted.wav, "audio/wav", metadata, received_at, replies.VOICE,
            lambda stored: replies.saved_audio(_int(stored.metadata, "audio", "duration_ms")),
        )

    def _photo_item(
        self, message: InboundMessage, item: MediaItem, budget: Budget, received_at: datetime
    ) -> ItemResult:
        ref = MediaRef(message.sender_id, IMAGES, message.message_sid, item.index)
        stored = self._find(ref, replies.PHOTO)
        if isinstance(stored, ItemResult):
            return stored
        if stored is not None:
            return ItemResult(replies.saved_photo(_faces(stored)), "already_saved", stored.key)
        downloaded = self._download(item, budget, replies.PHOTO)
        if isinstance(downloaded, ItemResult):
            return downloaded
        request = vision_pb2.DetectFacesRequest(
            image=downloaded,
            content_type=item.content_type,
            request_id=f"{message.message_sid}/{item.index}",
        )
        detected = self._call(self._vision.DetectFaces, request, budget, self._vision_timeout_s, replies.PHOTO)
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

    def _find(self, ref: MediaRef, what: str) -> StoredObject | ItemResult | None:
        """The object a previous delivery stored (a replay is answered without downloading again)."""
        try:
            return self._store.find(ref)
        except OSError as error:
            reason = redact_sender(str(error), ref.sender_id)
            logger.error("could not read the store", extra={"message_sid": ref.message_sid, "error": reason})
            return ItemResult(replies.STORE_FAILED.format(what=what), "store_failed", detail=reason, retryable=True)

    def _download(self, item: MediaItem, budget: Budget, what: str) -> bytes | ItemResult:
        if not item.url:
            return ItemResult(f"Sorry, I couldn't download your {what}.", "download_failed", detail="no MediaUrl")
        try:
            with metrics.stage_timer("download"):
                return self._downloader.fetch(item.url, budget).data
        except DownloadError as error:
            reply = replies.download_failed(what, error.failure, self._max_media_bytes)
            transient = error.failure in _TRANSIENT_DOWNLOADS
            return ItemResult(reply, "download_failed", detail=str(error), retryable=transient)

    def _call(self, method, request, budget: Budget, timeout_s: float, what: str):  # noqa: ANN001, ANN202
        timeout = budget.cap(timeout_s)
        if timeout <= 0:
            return ItemResult(replies.OUT_OF_TIME.format(what=what), "out_of_time", retryable=True)
        try:
            with metrics.stage_timer("convert" if what == replies.VOICE else "detect"):
                return method(request, timeout=timeout)
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
        data: bytes,
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
