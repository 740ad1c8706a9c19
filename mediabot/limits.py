"""The caps on media and the gRPC message sizes derived from them, for the services and their clients alike.

gRPC refuses messages over 4 MiB by default, far below a 16 MiB voice note or a 15-minute WAV, so both ends
of each channel raise their limits to exactly what the service can accept or produce. Both ends compute them
here from the same caps, so a longer AUDIO_MAX_DURATION_S cannot make the gateway refuse a valid answer.
Standard library only: the gateway imports it without pulling in a service.

Each cap has its one default here; the settings modules read the variables (the gateway reads the audio
service's AUDIO_MAX_DURATION_S itself, with the same default, rather than a knob of its own).
"""

from __future__ import annotations

import math

# WhatsApp's own media cap: the default of the gateway's MAX_MEDIA_BYTES and of the services'
# AUDIO_MAX_INPUT_BYTES / VISION_MAX_INPUT_BYTES (a service's cap must not be below the gateway's).
DEFAULT_MAX_MEDIA_BYTES = 16 * 1024 * 1024
# Longest audio the audio service converts (AUDIO_MAX_DURATION_S, read by the gateway too).
DEFAULT_MAX_AUDIO_DURATION_S = 900.0  # 15 minutes
DEFAULT_SAMPLE_RATE_HZ = 16000
DEFAULT_CHANNELS = 1
# The widest output a request may ask for (ConvertToWavRequest.sample_rate_hz / channels).
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 48000
MAX_CHANNELS = 2
BYTES_PER_SAMPLE = 2  # s16le
WAV_HEADER_BYTES = 44
# The decoder may run this far past the duration cap before it notices (one buffer).
DECODER_OVERSHOOT_S = 1.0
# Room for the other fields of a message (content type, request id, numbers) and protobuf framing.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
# A DetectFacesResponse is a few hundred bytes per face: gRPC's default limit is plenty.
MAX_VISION_RESPONSE_BYTES = 4 * 1024 * 1024


def wav_bytes(duration_s: float, sample_rate_hz: int, channels: int) -> int:
    """Size of a PCM s16le WAV file of that duration and shape."""
    return WAV_HEADER_BYTES + math.ceil(duration_s * sample_rate_hz) * channels * BYTES_PER_SAMPLE


def max_wav_bytes(
    max_duration_s: float = DEFAULT_MAX_AUDIO_DURATION_S,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    channels: int = DEFAULT_CHANNELS,
) -> int:
    """The largest WAV the audio service returns for that shape (16 kHz mono: what the bot asks for)."""
    return wav_bytes(max_duration_s + DECODER_OVERSHOOT_S, sample_rate_hz, channels)


def max_request_bytes(max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> int:
    """Largest ConvertToWavRequest / DetectFacesRequest: the media file and its small fields."""
    return max_media_bytes + MESSAGE_OVERHEAD_BYTES


def max_audio_response_bytes(
    max_duration_s: float = DEFAULT_MAX_AUDIO_DURATION_S,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    channels: int = DEFAULT_CHANNELS,
) -> int:
    """Largest ConvertToWavResponse for that output shape."""
    return max_wav_bytes(max_duration_s, sample_rate_hz, channels) + MESSAGE_OVERHEAD_BYTES


# With the defaults: 16,842,752 and 28,897,580 bytes.
MAX_REQUEST_BYTES = max_request_bytes()
MAX_RESPONSE_BYTES = max_audio_response_bytes()


def client_channel_options(
    max_input_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_duration_s: float = DEFAULT_MAX_AUDIO_DURATION_S,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    channels: int = DEFAULT_CHANNELS,
) -> list[tuple[str, int]]:
    """Options for an audio channel (``grpc.insecure_channel(addr, options=...)``) that can send the largest
    input and receive the largest output (by default: 16 kHz mono, what the bot asks for)."""
    return [
        ("grpc.max_send_message_length", max_request_bytes(max_input_bytes)),
        ("grpc.max_receive_message_length", max_audio_response_bytes(max_duration_s, sample_rate_hz, channels)),
    ]


def audio_server_message_bytes(max_input_bytes: int, max_duration_s: float) -> tuple[int, int]:
    """The audio server's (receive, send) limits: the largest input, the widest output any request may ask for."""
    return (
        max_request_bytes(max_input_bytes),
        max_audio_response_bytes(max_duration_s, MAX_SAMPLE_RATE_HZ, MAX_CHANNELS),
    )


def vision_server_message_bytes(max_input_bytes: int) -> tuple[int, int]:
    """The vision server's (receive, send) limits."""
    return max_request_bytes(max_input_bytes), MAX_VISION_RESPONSE_BYTES
