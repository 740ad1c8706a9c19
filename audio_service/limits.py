"""Message size limits shared by the audio service and its clients (the gateway's channel must use the same).

gRPC refuses messages over 4 MiB by default, far below a 16 MiB voice note or a 15-minute WAV, so both sides
raise their limits to exactly what the service can produce or accept. This module has no dependency beyond
the standard library so a client can import it without pulling in the service.
"""

from __future__ import annotations

import math

DEFAULT_MAX_INPUT_BYTES = 16 * 1024 * 1024  # WhatsApp's own media cap
DEFAULT_MAX_DURATION_S = 900.0  # 15 minutes
DEFAULT_SAMPLE_RATE_HZ = 16000
DEFAULT_CHANNELS = 1
# The widest output a request may ask for (ConvertToWavRequest.sample_rate_hz / channels).
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 48000
MAX_CHANNELS = 2
BYTES_PER_SAMPLE = 2  # s16le
WAV_HEADER_BYTES = 44
# Room for the other fields of a message (content type, request id, numbers) and protobuf framing.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def wav_bytes(duration_s: float, sample_rate_hz: int, channels: int) -> int:
    """Size of a PCM s16le WAV file of that duration and shape."""
    return WAV_HEADER_BYTES + math.ceil(duration_s * sample_rate_hz) * channels * BYTES_PER_SAMPLE


def max_request_bytes(max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> int:
    """Largest ConvertToWavRequest a client may send."""
    return max_input_bytes + MESSAGE_OVERHEAD_BYTES


def max_response_bytes(
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    channels: int = DEFAULT_CHANNELS,
) -> int:
    """Largest ConvertToWavResponse for that output shape (one extra second: the decoder's overshoot margin)."""
    return wav_bytes(max_duration_s + 1.0, sample_rate_hz, channels) + MESSAGE_OVERHEAD_BYTES


# With the defaults: 16,842,752 and 28,897,580 bytes.
MAX_REQUEST_BYTES = max_request_bytes()
MAX_RESPONSE_BYTES = max_response_bytes()


def client_channel_options(
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    channels: int = DEFAULT_CHANNELS,
) -> list[tuple[str, int]]:
    """Options for ``grpc.insecure_channel(addr, options=...)`` so the client can send the largest input and
    receive the largest output (by default: 16 kHz mono, what the bot asks for)."""
    return [
        ("grpc.max_send_message_length", max_request_bytes(max_input_bytes)),
        ("grpc.max_receive_message_length", max_response_bytes(max_duration_s, sample_rate_hz, channels)),
    ]


def server_options(max_input_bytes: int, max_duration_s: float) -> list[tuple[str, int]]:
    """The server's side: receive the largest input, send the widest output any request may ask for."""
    return [
        ("grpc.max_receive_message_length", max_request_bytes(max_input_bytes)),
        ("grpc.max_send_message_length", max_response_bytes(max_duration_s, MAX_SAMPLE_RATE_HZ, MAX_CHANNELS)),
    ]
