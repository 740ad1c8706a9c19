"""mediabot.wire and gateway.audio_client: the wire format written and read by hand is protobuf's own, both
ways, and the WAV comes back as a view of the received bytes (with a real audio service)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediabot.limits import client_channel_options
from gateway.audio_client import AudioClient
from mediabot.v1 import audio_pb2
from mediabot.wire import split_bytes_field, with_bytes_field

_TEXT = st.text(max_size=40)
_UINT32 = st.integers(min_value=0, max_value=2**32 - 1)


@given(audio=st.binary(max_size=5000), content_type=_TEXT, rate=_UINT32, channels=_UINT32, request_id=_TEXT)
def test_the_request_is_the_message_the_stub_would_send(
    audio: bytes, content_type: str, rate: int, channels: int, request_id: str
) -> None:
    fields = {"content_type": content_type, "sample_rate_hz": rate, "channels": channels, "request_id": request_id}
    raw = with_bytes_field(audio_pb2.ConvertToWavRequest(**fields).SerializeToString(), 1, audio)
    assert audio_pb2.ConvertToWavRequest.FromString(raw) == audio_pb2.ConvertToWavRequest(audio=audio, **fields)


@given(wav=st.binary(max_size=5000), rate=_UINT32, bits=_UINT32, duration=st.integers(0, 2**64 - 1),
       source_format=_TEXT, source_codec=_TEXT)
def test_the_wav_is_found_in_any_response(
    wav: bytes, rate: int, bits: int, duration: int, source_format: str, source_codec: str
) -> None:
    message = audio_pb2.ConvertToWavResponse(
        wav=wav, sample_rate_hz=rate, channels=1, bits_per_sample=bits, duration_ms=duration,
        source_format=source_format, source_codec=source_codec,
    )
    raw = message.SerializeToString()
    found, rest = split_bytes_field(raw, 1)
    assert bytes(found) == wav
    assert found.obj is raw  # a view, not a copy
    parsed = audio_pb2.ConvertToWavResponse.FromString(rest)
    message.wav = b""
    assert parsed == message


@pytest.mark.parametrize("raw", [b"\x0a\x05abc", b"\x0a", b"\x80", b"\x0b"], ids=["short", "no-length", "varint", "wire-3"])
def test_malformed_answers_are_errors(raw: bytes) -> None:
    with pytest.raises(ValueError):
        split_bytes_field(raw, 1)


def test_a_voice_note_converts_through_the_real_service(audio_server: str, voice_note: Path) -> None:
    with grpc.insecure_channel(audio_server, options=client_channel_options()) as channel:
        converted = AudioClient(channel).convert(
            voice_note.read_bytes(), audio_pb2.ConvertToWavRequest(content_type="audio/ogg", sample_rate_hz=16000,
                                                                    channels=1, request_id="t"), timeout=30,
        )
    assert bytes(converted.wav[:4]) == b"RIFF" and bytes(converted.wav[8:12]) == b"WAVE"
    assert converted.response.sample_rate_hz == 16000 and converted.response.duration_ms > 1000
    assert converted.response.wav == b""
    assert abs(len(converted.wav) - 44 - converted.response.duration_ms * 32) < 32  # ms rounding
