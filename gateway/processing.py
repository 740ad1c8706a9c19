"""One media item, from its URL to a stored object and one sentence of reply.

Audio goes through AudioService.ConvertToWav and is stored as the WAV it returns. Photos go through
VisionService.DetectFaces and are stored as the original bytes, untouched, only when a face was found.
Everything else is answered without being downloaded. Every failure ends in a sentence for the user
and an outcome (gateway.outcome) for the log line; nothing here lets an exception reach the webhook.

Both kinds go through one pipeline (``MediaProcessor._keep``): the erase check, a look for an earlier
delivery's object, the download under a memory claim, the service call, the store and the erase check
again. What differs per kind is a ``MediaKind``: which folder, which service call and what it keeps, the
metrics stage, and the sentences. A step that ends the item early raises ``NotKept``, caught once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

import grpc

from gateway import metrics, replies
from gateway.audio_client import AudioClient
from gateway.budget import Budget
from gateway.download import DownloadError, Failure, MediaDownloader
from gateway.message import InboundMessage, MediaItem
from gateway.media_memory import Claim, MediaMemory, MemoryBusy
from gateway.outcome import NotKept, Outcome
from gateway.sender import mask_phone, redact_sender
from gateway.storage.base import Store, StoredObject
from gateway.storage.keys import AUDIO, IMAGES, MediaRef
from mediabot import limits
from mediabot.v1 import audio_pb2, vision_pb2, vision_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})

# Pillow's format name (what the vision service detected) -> the content type the photo is stored as.
# MPO is how Pillow names the multi-picture JPEGs many phone cameras write: still a JPEG file.
_STORED_PHOTO_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

# Failures worth another attempt later (Outcome.UNAVAILABLE, BUSY or ERROR). INVALID_ARGUMENT / OUT_OF_RANGE
# (bad input, over the size or duration limit) and NOT_FOUND, PERMISSION_DENIED, ... are answers about the
# input or the setup, not about the moment. RESOURCE_EXHAUSTED is the service's full queue ("Concurrent RPC
# limit exceeded"): a burst, not the media.
# UNKNOWN and INTERNAL are included: a service dying mid-call can surface as either, and a deterministic
# one still ends, in SPOOL_DIR/failed/ after SPOOL_GIVE_UP_AFTER_S.
_TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
})
# The media host's 5xx, timeouts and broken connections; Twilio keeps the media, so it will be there later.
_TRANSIENT_DOWNLOADS = frozenset({Failure.TIMEOUT, Failure.SERVER_ERROR, Failure.CONNECTION})
# What a service's answer means for the item; a code not here is Outcome.ERROR when transient, else REFUSED.
_RPC_OUTCOMES = {
    grpc.StatusCode.INVALID_ARGUMENT: Outcome.REJECTED,
    grpc.StatusCode.OUT_OF_RANGE: Outcome.TOO_LARGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Outcome.BUSY,
    grpc.StatusCode.UNAVAILABLE: Outcome.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Outcome.UNAVAILABLE,
}

# The largest WAV the audio service returns for the 16 kHz mono the bot asks for, with its default
# AUDIO_MAX_DURATION_S (mediabot.limits; Services passes the configured one). A voice note claims this much
# memory for the answer before it is converted (gateway.media_memory).
MAX_WAV_BYTES = limits.max_wav_bytes()

@dataclass(frozen=True)
class ItemResult:
    reply: str
    outcome: Outcome
    key: str | None = None
    detail: str = ""

    @property
    def retryable(self) -> bool:
        """True when trying again later may succeed: the spool keeps the item for the background worker."""
        return self.outcome.retryable

    def given_up(self, content_type: str) -> ItemResult:
        """This still-failing result once the intake stops trying (the poison cap, or a day of failures):
        final, with its own sentence; the detail keeps what kept failing."""
        return ItemResult(replies.gave_up(content_type), Outcome.GAVE_UP, detail=f"{self.outcome}: {self.detail}")


@dataclass(frozen=True)
class Keep:
    """What a service's answer says to store for an item: the bytes, their type, and the kind's metadata."""

    data: bytes | memoryview
    content_type: str
    metadata: Mapping[str, object]


@dataclass(frozen=True)
class MediaKind:
    """What differs between a voice note and a photo; the pipeline (``MediaProcessor._keep``) is the same."""

    folder: str  # the key's kind: AUDIO or IMAGES
    what: str  # how the sentences name it: replies.VOICE or replies.PHOTO
    stage: str  # the metrics stage its service call is timed as (gateway.metrics.STAGES)
    # Memory claimed with the download for what the service returns (the WAV), beyond the download itself.
    answer_bytes: int
    # The sentence for an object stored for it (now or by an earlier delivery).
    saved_reply: Callable[[StoredObject], str]


AUDIO_KIND = MediaKind(
    folder=AUDIO, what=replies.VOICE, stage="convert", answer_bytes=MAX_WAV_BYTES,
    saved_reply=lambda stored: replies.saved_audio(_int(stored.metadata, "audio", "duration_ms")),
)
PHOTO_KIND = MediaKind(
    folder=IMAGES, what=replies.PHOTO, stage="detect", answer_bytes=0,
    saved_reply=lambda stored: replies.saved_photo(_faces(stored)),
)


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
        max_wav_bytes: int = MAX_WAV_BYTES,
        memory: MediaMemory | None = None,
    ) -> None:
        self._downloader = downloader
        self._store = store
        self._audio = audio
        self._vision = vision
        self._audio_timeout_s = audio_timeout_s
        self._vision_timeout_s = vision_timeout_s
        self._max_media_bytes = max_media_bytes
        # The voice-note kind with the WAV this gateway's AUDIO_MAX_DURATION_S allows as its answer.
        self._audio_kind = replace(AUDIO_KIND, answer_bytes=max_wav_bytes)
        # None: no bound (a unit test's processor); Services always gives one (MEDIA_MEMORY_MB).
        self._memory = memory

    def process(self, message: InboundMessage, item: MediaItem, budget: Budget, received_at: datetime) -> ItemResult:
        """Handle one item and write its log line; never raises."""
        started = time.monotonic()
        try:
            result = self._dispatch(message, item, budget, received_at)
        except NotKept as stop:
            result = ItemResult(stop.reply, stop.outcome, detail=stop.detail)
        except Exception:  # the last line of defence: the user still gets a sentence, the log the traceback
            logger.exception(
                "media item failed unexpectedly",
                extra={"message_sid": message.message_sid, "media_index": item.index},
            )
            result = ItemResult(replies.INTERNAL_ERROR, Outcome.ERROR)
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
            raise NotKept(Outcome.UNSUPPORTED, replies.unsupported("stickers"))
        if content_type.startswith("audio/"):
            return self._keep(self._audio_kind, self._convert, message, item, budget, received_at)
        if content_type in PHOTO_TYPES:
            return self._keep(PHOTO_KIND, self._detect, message, item, budget, received_at)
        raise NotKept(Outcome.UNSUPPORTED, replies.unsupported(_describe(content_type)))

    def _keep(
        self,
        kind: MediaKind,
        analyse: Callable[[InboundMessage, MediaItem, bytes, Budget], Keep],
        message: InboundMessage,
        item: MediaItem,
        budget: Budget,
        received_at: datetime,
    ) -> ItemResult:
        """The one pipeline: erased? already stored? download, ``analyse`` (the kind's service call), store."""
        ref = MediaRef(message.sender_id, kind.folder, message.message_sid, item.index)
        self._stop_if_erased(ref, received_at, kind.what)
        stored = self._find(ref, kind.what)
        if stored is not None:
            return ItemResult(kind.saved_reply(stored), Outcome.ALREADY_SAVED, stored.key)
        with self._claim(budget) as claim:
            # One claim for the media and what the service returns for it, taken at once: an item never
            # waits for memory while holding some, so items cannot hold each other up.
            downloaded = self._download(item, budget, kind.what, claim, extra_bytes=kind.answer_bytes)
            keep = analyse(message, item, downloaded, budget)
            metadata = _common_metadata(message, item, received_at, len(downloaded)) | dict(keep.metadata)
            del downloaded  # a photo's bytes live on in ``keep``; a voice note's can go before the WAV is stored
            stored, created = self._put(ref, keep.data, keep.content_type, metadata, received_at, kind.what)
        # An erase that ran while this item was downloaded or analysed did not see this object (it was not
        # there yet): look again now that it is, and take it back.
        self._stop_if_erased(ref, received_at, kind.what)
        return ItemResult(kind.saved_reply(stored), Outcome.SAVED if created else Outcome.ALREADY_SAVED, stored.key)

    # -- each kind's service call ---------------------------------------------------------------------------

    def _convert(self, message: InboundMessage, item: MediaItem, downloaded: bytes, budget: Budget) -> Keep:
        """AudioService.ConvertToWav: what is kept is the WAV it returns."""
        request = audio_pb2.ConvertToWavRequest(
            content_type=item.content_type,
            sample_rate_hz=16000,
            channels=1,
            request_id=f"{message.message_sid}/{item.index}",
        )
        converted = self._call(
            lambda timeout: self._audio.convert(downloaded, request, timeout=timeout),
            budget, self._audio_timeout_s, self._audio_kind,
        )
        response = converted.response
        return Keep(
            # A view of the bytes gRPC received: stored without another copy.
            data=converted.wav,
            content_type="audio/wav",
            metadata={
                "source": {"format": response.source_format, "codec": response.source_codec},
                "audio": {
                    "duration_ms": response.duration_ms,
                    "sample_rate_hz": response.sample_rate_hz,
                    "channels": response.channels,
                    "bits_per_sample": response.bits_per_sample,
                },
            },
        )

    def _detect(self, message: InboundMessage, item: MediaItem, downloaded: bytes, budget: Budget) -> Keep:
        """VisionService.DetectFaces: what is kept is the original photo, untouched, when it shows a face."""
        request = vision_pb2.DetectFacesRequest(
            image=downloaded,
            content_type=item.content_type,
            request_id=f"{message.message_sid}/{item.index}",
        )
        detected = self._call(
            lambda timeout: self._vision.DetectFaces(request, timeout=timeout),
            budget, self._vision_timeout_s, PHOTO_KIND,
        )
        del request  # the original bytes are what is stored; the message's copy can go
        if not detected.has_face:
            raise NotKept(Outcome.NO_FACE, replies.NO_FACE)
        stored_type = _STORED_PHOTO_TYPES.get(detected.format)
        if stored_type is None:  # e.g. a GIF declared as image/jpeg: decodable, but not a type we keep
            raise NotKept(Outcome.UNSUPPORTED, replies.PHOTO_FORMAT, f"detected format {detected.format}")
        return Keep(
            data=downloaded,
            content_type=stored_type,
            metadata={
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
            },
        )

    # -- the steps, each raising NotKept when the item ends there ------------------------------------------------

    def _claim(self, budget: Budget):  # noqa: ANN202 (a context manager of Claim or None)
        return self._memory.claim(budget) if self._memory is not None else nullcontext(None)

    def _store_failed(self, ref: MediaRef, what: str, error: OSError, log: str) -> NotKept:
        reason = redact_sender(str(error), ref.sender_id)
        logger.error(log, extra={"message_sid": ref.message_sid, "error": reason})
        return NotKept(Outcome.STORE_FAILED, replies.STORE_FAILED.format(what=what), reason)

    def _find(self, ref: MediaRef, what: str) -> StoredObject | None:
        """The object a previous delivery stored (a replay is answered without downloading again)."""
        try:
            return self._store.find(ref)
        except OSError as error:
            raise self._store_failed(ref, what, error, "could not read the store") from None

    def _stop_if_erased(self, ref: MediaRef, received_at: datetime, what: str) -> None:
        """NotKept(ERASED) when the sender erased their data after this item arrived (gateway.privacy): it is
        never stored, and what an attempt racing the erase stored for it is taken back. Returns: go on as
        usual. A store that cannot answer means "try again later", never "store anyway"."""
        try:
            erased_at = self._store.marker("erased", ref.sender_id)
            if erased_at is None or received_at > erased_at:
                return
            stored = self._store.find(ref)
            if stored is not None:
                self._store.delete(stored.key)
        except OSError as error:
            raise self._store_failed(ref, what, error, "could not check or apply an erasure") from None
        raise NotKept(Outcome.ERASED, replies.erased(what), "the sender erased their data after it arrived")

    def _download(
        self, item: MediaItem, budget: Budget, what: str, claim: Claim | None, extra_bytes: int = 0
    ) -> bytes:
        """The media's bytes; with a ``claim``, its size plus ``extra_bytes`` is claimed before the body is read."""
        if not item.url:
            raise NotKept(Outcome.DOWNLOAD_FAILED, f"Sorry, I couldn't download your {what}.", "no MediaUrl")
        on_length = None if claim is None else (lambda size: claim.take(size + extra_bytes))
        try:
            with metrics.stage_timer("download"):
                return self._downloader.fetch(item.url, budget, on_length).data
        except MemoryBusy as error:
            # Not the media's fault: the process is busy with other large media. The spool tries it again.
            raise NotKept(Outcome.BUSY, replies.rpc_failed(what, grpc.StatusCode.UNAVAILABLE), str(error)) from None
        except DownloadError as error:
            reply = replies.download_failed(what, error.failure, self._max_media_bytes)
            # The media host's moment (a 5xx, a timeout) is worth another try; its answer about the media is not.
            outcome = Outcome.UNAVAILABLE if error.failure in _TRANSIENT_DOWNLOADS else Outcome.DOWNLOAD_FAILED
            raise NotKept(outcome, reply, str(error)) from None

    def _call(self, call: Callable[[float], T], budget: Budget, timeout_s: float, kind: MediaKind) -> T:
        """``call(timeout)``'s answer; NotKept with the outcome its gRPC error means."""
        timeout = budget.cap(timeout_s)
        if timeout <= 0:
            raise NotKept(Outcome.OUT_OF_TIME, replies.OUT_OF_TIME.format(what=kind.what))
        try:
            with metrics.stage_timer(kind.stage):
                return call(timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise NotKept(rpc_outcome(code), replies.rpc_failed(kind.what, code),
                          f"{code.name if code else '?'}: {details}") from None

    def _put(
        self,
        ref: MediaRef,
        data: bytes | memoryview,
        content_type: str,
        metadata: dict[str, object],
        received_at: datetime,
        what: str,
    ) -> tuple[StoredObject, bool]:
        try:
            with metrics.stage_timer("store"):
                return self._store.put(ref, data, content_type=content_type, metadata=metadata,
                                       received_at=received_at)
        except OSError as error:
            raise self._store_failed(ref, what, error, "could not store media") from None


def rpc_outcome(code: grpc.StatusCode | None) -> Outcome:
    """What a service's status code means for the item; transient codes are always a retryable outcome."""
    if code in _RPC_OUTCOMES:
        return _RPC_OUTCOMES[code]
    return Outcome.ERROR if code in _TRANSIENT_CODES or code is None else Outcome.REFUSED


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
