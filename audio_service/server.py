"""The AudioService gRPC server: request in, audio_service.convert does the work, status codes out."""

from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple

import grpc

from audio_service.config import Settings
from audio_service.convert import (
    AudioConverter,
    AudioError,
    AudioTooLarge,
    ConversionCancelled,
    ConverterUnavailable,
    DeadlineExceeded,
    InvalidAudio,
    UnsupportedOutput,
    find_ffmpeg,
)
from mediabot import limits
from mediabot.grpc_server import GrpcServer, ServerConfig, build_server
from mediabot.v1 import audio_pb2, audio_pb2_grpc
from mediabot.wire import with_bytes_field

logger = logging.getLogger(__name__)

SERVICE_NAME = audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name  # "mediabot.v1.AudioService"

# Most specific first: AudioTooLong is an AudioTooLarge.
_STATUS_BY_ERROR: tuple[tuple[type[AudioError], grpc.StatusCode], ...] = (
    (InvalidAudio, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedOutput, grpc.StatusCode.INVALID_ARGUMENT),
    # OUT_OF_RANGE, not RESOURCE_EXHAUSTED: that one is gRPC's own "queue full, try later" (see audio.proto).
    (AudioTooLarge, grpc.StatusCode.OUT_OF_RANGE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ConversionCancelled, grpc.StatusCode.CANCELLED),
    (ConverterUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_for(error: AudioError) -> grpc.StatusCode:
    """The gRPC status the contract (protos/mediabot/v1/audio.proto) promises for a conversion failure."""
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


class AudioServicer(audio_pb2_grpc.AudioServiceServicer):
    """Translates between the wire and AudioConverter, and ties each ffmpeg run to its RPC's lifetime."""

    def __init__(self, converter: AudioConverter) -> None:
        self._converter = converter

    def ConvertToWav(  # noqa: N802 (name fixed by the generated base class)
        self, request: audio_pb2.ConvertToWavRequest, context: grpc.ServicerContext
    ) -> WavAnswer:
        started = time.perf_counter()
        # Set when the RPC ends for any reason; while converting, that means the client cancelled or went away,
        # and the conversion kills ffmpeg rather than decode for nobody.
        cancelled = threading.Event()
        if not context.add_callback(cancelled.set):
            cancelled.set()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        audio = request.audio  # each access of a bytes field copies it out of the message: read it once
        fields: dict[str, object] = {
            "request_id": request.request_id,
            "content_type": request.content_type,
            "input_bytes": len(audio),
        }
        try:
            result = self._converter.convert(
                audio,
                sample_rate_hz=request.sample_rate_hz or limits.DEFAULT_SAMPLE_RATE_HZ,
                channels=request.channels or limits.DEFAULT_CHANNELS,
                deadline=deadline,
                cancelled=cancelled,
            )
        except AudioError as exc:
            code = status_for(exc)
            if code is grpc.StatusCode.CANCELLED and _deadline_passed(context):
                # gRPC ends the RPC (which sets ``cancelled``) when its deadline passes; name the real cause.
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            fields.update(outcome=code.name, reason=str(exc), elapsed_ms=_elapsed_ms(started))
            level = logging.ERROR if code is grpc.StatusCode.UNAVAILABLE else logging.WARNING
            logger.log(level, "audio conversion refused", extra=fields)
            context.abort(code, str(exc))
        # Anything else: mediabot.grpc_server's catch-all logs it and answers INTERNAL.

        fields.update(
            outcome="OK",
            source_format=result.source_format,
            source_codec=result.source_codec,
            duration_ms=result.duration_ms,
            output_bytes=len(result.wav),
            elapsed_ms=_elapsed_ms(started),
        )
        logger.info("audio converted", extra=fields)
        response = audio_pb2.ConvertToWavResponse(
            sample_rate_hz=result.sample_rate_hz,
            channels=result.channels,
            bits_per_sample=result.bits_per_sample,
            duration_ms=result.duration_ms,
            source_format=result.source_format,
            source_codec=result.source_codec,
        )
        del audio
        # The WAV joins the message only when gRPC serializes it (serialize_answer): one copy, not three.
        return WavAnswer(response, result.wav)


class WavAnswer(NamedTuple):
    """A ConvertToWavResponse without its ``wav``, and the WAV, serialized together by ``serialize_answer``."""

    message: audio_pb2.ConvertToWavResponse
    wav: bytes | bytearray


_WAV_FIELD = audio_pb2.ConvertToWavResponse.DESCRIPTOR.fields_by_name["wav"].number


def serialize_answer(answer: WavAnswer) -> bytes:
    """The bytes of the ConvertToWavResponse the generated code would send, with the WAV copied once
    (protobuf-python would copy it into the message and again to serialize it; see mediabot.wire)."""
    return with_bytes_field(answer.message.SerializeToString(), _WAV_FIELD, answer.wav)


def _deadline_passed(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    # A few ms of slack: gRPC's deadline timer and this clock reading are not the same instant.
    return remaining is not None and remaining < 0.01


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def server_config(settings: Settings) -> ServerConfig:
    """The shared skeleton's settings (mediabot.grpc_server): one thread per concurrent conversion (each is an
    ffmpeg process), the largest input and widest output as message limits."""
    receive, send = limits.audio_server_message_bytes(settings.max_input_bytes, settings.max_duration_s)
    return ServerConfig(
        name="audio", service_name=SERVICE_NAME, settings=settings, max_receive_bytes=receive, max_send_bytes=send,
        log_fields={"max_input_bytes": settings.max_input_bytes, "max_duration_s": settings.max_duration_s},
    )


def create_server(settings: Settings) -> GrpcServer:
    """A configured, bound, not yet started server (binding port 0 picks a free one: ``.port``).

    Health is SERVING only when ffmpeg runs: it is the one thing needed at run time (it also detects the
    format, so there is no ffprobe process per call).
    """
    converter = AudioConverter(
        max_input_bytes=settings.max_input_bytes,
        max_duration_s=settings.max_duration_s,
        ffmpeg=settings.ffmpeg,
        tmp_dir=settings.tmp_dir,
    )
    built = build_server(server_config(settings))
    # Registered by hand rather than with add_AudioServiceServicer_to_server, only to serialize the answer
    # with serialize_answer; the request is parsed by the generated class as usual.
    handlers = {
        "ConvertToWav": grpc.unary_unary_rpc_method_handler(
            AudioServicer(converter).ConvertToWav,
            request_deserializer=audio_pb2.ConvertToWavRequest.FromString,
            response_serializer=serialize_answer,
        ),
    }
    built.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    if find_ffmpeg(settings.ffmpeg):
        built.set_serving(True)
    else:
        logger.error("ffmpeg not found or not runnable; health stays NOT_SERVING", extra={"ffmpeg": settings.ffmpeg})
    return built
