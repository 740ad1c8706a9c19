"""The gateway's long-lived clients, built once per app from its settings and closed with it.

Made in the app factory rather than at import, so each gunicorn worker (the app is created after the
fork, without --preload) gets its own gRPC channels and connection pool, and tests get fresh ones.
The intake and privacy are built here too, once, so the webhooks, /metrics, /readyz and the spool worker
all use the same ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from gateway.audio_client import AudioClient
from gateway.config import Settings
from gateway.deferred import DeferredReplies, make_deferred_replies
from gateway.download import MediaDownloader
from gateway.intake import Intake
from gateway.intake.spooled import SpoolIntake
from gateway.media_memory import MIB, MediaMemory
from gateway.privacy import Privacy
from gateway.processing import MediaProcessor
from gateway.whatsapp.signature import SignatureChecker
from gateway.storage.factory import open_store
from gateway.storage.base import Store
from gateway.telegram.botapi import BotApi, MediaFetcher
from mediabot import limits
from mediabot.grpc_tls import channel_credentials
from mediabot.v1 import audio_pb2, vision_pb2, vision_pb2_grpc

_AUDIO_SERVICE = audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name
_VISION_SERVICE = vision_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name
_HEALTH_SERVICE = "grpc.health.v1.Health"


def service_config(service: str, max_attempts: int) -> str:
    """gRPC service config: calls spread over every address the target resolves to, and UNAVAILABLE (a
    restarting service, a refused connection) retried a bounded number of times with exponential backoff,
    inside the call's own deadline.

    round_robin rather than gRPC's default pick_first: with ``dns:///audio-headless:50051`` the name resolves
    to every replica, and pick_first would send every call down the first one's connection. The services
    close connections after *_MAX_CONNECTION_AGE_S, so the name is resolved again and new replicas join.

    Only UNAVAILABLE is retried here: it means the request was not processed, and both RPCs are pure functions
    of their input anyway, so a retry cannot do anything twice. DEADLINE_EXCEEDED and the input errors are
    final; RESOURCE_EXHAUSTED (a full queue) is left to the spool, which retries later rather than at once.
    """
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts <= 1:
        return json.dumps(config)
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    methods = [{"service": service}, {"service": _HEALTH_SERVICE}]
    config["methodConfig"] = [{"name": methods, "retryPolicy": policy}]
    return json.dumps(config)


def _channel_options(
    service: str, max_request_bytes: int, max_response_bytes: int, max_attempts: int
) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_send_message_length", max_request_bytes),
        ("grpc.max_receive_message_length", max_response_bytes),
        ("grpc.service_config", service_config(service, max_attempts)),
        # Our config wins over one a resolver (DNS TXT) might offer.
        ("grpc.service_config_disable_resolution", 1),
        # gRPC keeps a request for retrying only while it fits this buffer (default 256 KiB), so without it
        # a photo or voice note would silently lose its retries.
        ("grpc.per_rpc_retry_buffer_size", max_request_bytes),
        ("grpc.retry_buffer_size", 4 * max_request_bytes),
    ]


def make_channel(
    settings: Settings, addr: str, service: str, max_request_bytes: int, max_response_bytes: int
) -> grpc.Channel:
    """One long-lived channel to ``addr`` (host:port, or ``dns:///name:port`` for a name with many addresses,
    e.g. a headless Service): TLS when GRPC_TLS_CA_FILE is set, plaintext otherwise."""
    options = _channel_options(service, max_request_bytes, max_response_bytes, settings.grpc_max_attempts)
    credentials = channel_credentials(
        settings.grpc_tls_ca_file, settings.grpc_tls_cert_file, settings.grpc_tls_key_file, prefix="GRPC"
    )
    if credentials is None:
        return grpc.insecure_channel(addr, options=options)
    return grpc.secure_channel(addr, credentials, options=options)


@dataclass
class Services:
    settings: Settings
    signatures: SignatureChecker
    store: Store
    downloader: MediaDownloader
    audio_channel: grpc.Channel
    vision_channel: grpc.Channel
    processor: MediaProcessor
    # Where verified messages are kept until their media is done (INTAKE: the spool at SPOOL_DIR, or JetStream).
    intake: Intake
    privacy: Privacy
    # How a worker tells a user the outcome of an item finished after the webhook answered (gateway.deferred:
    # Twilio's REST API for WhatsApp, sendMessage for Telegram); both intakes' workers call deferred.tell().
    deferred: DeferredReplies
    # The Bot API client when Telegram is on (TELEGRAM_BOT_TOKEN, or development mode), else None.
    telegram: BotApi | None = None

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
            allow_private=settings.media_allow_private_addresses,
        )
        telegram = make_bot_api(settings)
        # The same sizes the services use (mediabot.limits): the media file plus its fields out, and back the
        # longest WAV the audio service may answer with (its AUDIO_MAX_DURATION_S, 16 kHz mono).
        max_request = limits.max_request_bytes(settings.max_media_bytes)
        audio_channel = make_channel(
            settings, settings.audio_service_addr, _AUDIO_SERVICE, max_request,
            limits.max_audio_response_bytes(settings.audio_max_duration_s),
        )
        vision_channel = make_channel(
            settings, settings.vision_service_addr, _VISION_SERVICE, max_request, limits.MAX_VISION_RESPONSE_BYTES
        )
        processor = MediaProcessor(
            downloader=MediaFetcher(downloader, telegram),  # type: ignore[arg-type]  # the same fetch()
            store=store,
            audio=AudioClient(audio_channel),
            vision=vision_pb2_grpc.VisionServiceStub(vision_channel),
            audio_timeout_s=settings.audio_rpc_timeout_s,
            vision_timeout_s=settings.vision_rpc_timeout_s,
            max_media_bytes=settings.max_media_bytes,
            max_wav_bytes=limits.max_wav_bytes(settings.audio_max_duration_s),
            memory=MediaMemory(settings.media_memory_mb * MIB, settings.media_memory_wait_s),
        )
        intake = make_intake(settings, processor)
        privacy = Privacy(store, intake, retention_days=settings.retention_days, notice=settings.privacy_notice,
                          policy_url=settings.privacy_policy_url)
        return cls(
            settings=settings,
            signatures=SignatureChecker(settings),
            store=store,
            downloader=downloader,
            audio_channel=audio_channel,
            vision_channel=vision_channel,
            processor=processor,
            intake=intake,
            privacy=privacy,
            deferred=make_deferred_replies(settings, telegram),
            telegram=telegram,
        )

    def close(self) -> None:
        self.downloader.close()
        if self.telegram is not None:
            self.telegram.close()
        self.audio_channel.close()
        self.vision_channel.close()
        self.store.close()
        close_intake = getattr(self.intake, "close", None)  # JetStreamIntake: its NATS connection
        if close_intake is not None:
            close_intake()


def make_intake(settings: Settings, processor: MediaProcessor) -> Intake:
    """The configured intake. The spool: an OSError here (SPOOL_DIR cannot be made) stops start-up rather
    than the first webhook. JetStream: nothing is connected yet (after gunicorn's fork, on first use)."""
    if settings.intake == "jetstream":
        from gateway.intake.jetstream_intake import JetStreamIntake

        return JetStreamIntake.open(settings, processor)
    return SpoolIntake.open(settings, processor)


def make_bot_api(settings: Settings) -> BotApi | None:
    """The Bot API client for TELEGRAM_API_BASE_URL, or None when the Telegram channel is off."""
    if not settings.telegram_enabled:
        return None
    return BotApi(
        token=settings.telegram_bot_token,
        base_url=settings.telegram_api_base_url,
        max_bytes=settings.max_media_bytes,
        connect_timeout_s=settings.download_connect_timeout_s,
        read_timeout_s=settings.download_read_timeout_s,
        allow_private=settings.media_allow_private_addresses,
    )


def make_store(settings: Settings) -> Store:
    """The configured Store. An S3 store is not checked here but on first use, and again until it passes
    (gateway.storage.s3): storage down at boot must not stop the gateway, whose webhooks keep being accepted
    into the intake meanwhile. StoreStartupError only for a MEDIA_ROOT that cannot be used."""
    return open_store(settings, check_on_first_use=True)
