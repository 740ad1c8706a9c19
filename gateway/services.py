"""The gateway's long-lived clients, built once per app from its settings and closed with it.

Made in the app factory rather than at import, so each gunicorn worker (the app is created after the
fork, without --preload) gets its own gRPC channels and connection pool, and tests get fresh ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gateway.config import Settings
from gateway.download import MediaDownloader
from gateway.processing import MediaProcessor
from gateway.signature import SignatureChecker
from gateway.store import Store, open_store
from mediabot.v1 import audio_pb2_grpc, vision_pb2_grpc

# gRPC refuses messages over 4 MiB by default. Requests carry a whole media file (up to MAX_MEDIA_BYTES)
# plus a few small fields; the audio service answers with up to a 15-minute 16 kHz mono WAV (about 29 MB).
_REQUEST_OVERHEAD_BYTES = 64 * 1024
_MAX_AUDIO_RESPONSE_BYTES = 64 * 1024 * 1024


def _channel_options(max_request_bytes: int, max_response_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_request_bytes),
        ("grpc.max_receive_message_length", max_response_bytes),
    ]


@dataclass
class Services:
    settings: Settings
    signatures: SignatureChecker
    store: Store
    downloader: MediaDownloader
    audio_channel: grpc.Channel
    vision_channel: grpc.Channel
    processor: MediaProcessor

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        store = make_store(settings)
        downloader = MediaDownloader(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            allowlist=settings.media_host_allowlist,
            max_bytes=settings.max_media_bytes,
            connect_timeout_s=settings.download_connect_timeout_s,
            read_timeout_s=settings.download_read_timeout_s,
            retry_delays_s=settings.media_404_retry_delays_s,
        )
        max_request = settings.max_media_bytes + _REQUEST_OVERHEAD_BYTES
        audio_channel = grpc.insecure_channel(
            settings.audio_service_addr, options=_channel_options(max_request, _MAX_AUDIO_RESPONSE_BYTES)
        )
        # A DetectFacesResponse is a few hundred bytes; gRPC's default receive limit is plenty.
        vision_channel = grpc.insecure_channel(
            settings.vision_service_addr, options=_channel_options(max_request, 4 * 1024 * 1024)
        )
        processor = MediaProcessor(
            downloader=downloader,
            store=store,
            audio=audio_pb2_grpc.AudioServiceStub(audio_channel),
            vision=vision_pb2_grpc.VisionServiceStub(vision_channel),
            audio_timeout_s=settings.audio_rpc_timeout_s,
            vision_timeout_s=settings.vision_rpc_timeout_s,
            max_media_bytes=settings.max_media_bytes,
        )
        return cls(
            settings=settings,
            signatures=SignatureChecker(settings),
            store=store,
            downloader=downloader,
            audio_channel=audio_channel,
            vision_channel=vision_channel,
            processor=processor,
        )

    def close(self) -> None:
        self.downloader.close()
        self.audio_channel.close()
        self.vision_channel.close()
        self.store.close()


def make_store(settings: Settings) -> Store:
    """The configured Store, checked (bucket created, credentials tried); StoreStartupError if unusable."""
    return open_store(settings)
