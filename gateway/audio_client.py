"""AudioService.ConvertToWav with the voice note and its WAV passed through, not copied through messages.

protobuf-python copies a ``bytes`` field into a message and copies it out again on every read, and the
generated stub serializes the message to yet another copy: for a 15-minute voice note (a 29 MB WAV) that
is 80 MB more per item than the bytes themselves, times the gateway's threads. So this client speaks the
same wire format with gRPC's raw (serializer-less) method:
- the request is the message's small fields, serialized as usual, followed by the ``audio`` field encoded
  here (protobuf merges fields in any order: it is exactly the message the stub would send);
- the response's ``wav`` field is located in the received bytes and handed out as a memoryview of them,
  and only the other fields are parsed by protobuf.
The contract (protos/mediabot/v1/audio.proto) is unchanged; the audio service sees an ordinary request.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from mediabot.v1 import audio_pb2

_METHOD = "/" + audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name + "/ConvertToWav"
_AUDIO_FIELD = audio_pb2.ConvertToWavRequest.DESCRIPTOR.fields_by_name["audio"].number
_WAV_FIELD = audio_pb2.ConvertToWavResponse.DESCRIPTOR.fields_by_name["wav"].number
_LENGTH_DELIMITED = 2


@dataclass(frozen=True)
class Converted:
    # Every field of the response but ``wav`` (left empty there).
    response: audio_pb2.ConvertToWavResponse
    wav: memoryview


class AudioClient:
    """Made once per channel; thread-safe like the stub it stands in for."""

    def __init__(self, channel: grpc.Channel) -> None:
        # No serializers: gRPC sends and returns bytes as they are.
        self._call = channel.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)

    def convert(self, audio: bytes, request: audio_pb2.ConvertToWavRequest, *, timeout: float) -> Converted:
        """``request`` without its audio; raises grpc.RpcError like the stub."""
        raw = self._call(with_bytes_field(request.SerializeToString(), _AUDIO_FIELD, audio), timeout=timeout)
        wav, rest = split_bytes_field(raw, _WAV_FIELD)
        return Converted(audio_pb2.ConvertToWavResponse.FromString(rest), wav)


def with_bytes_field(serialized: bytes, number: int, payload: bytes) -> bytes:
    """``serialized`` with a length-delimited field appended (one copy of ``payload``)."""
    return b"".join((serialized, _varint(number << 3 | _LENGTH_DELIMITED), _varint(len(payload)), payload))


def split_bytes_field(raw: bytes, number: int) -> tuple[memoryview, bytes]:
    """The last occurrence of length-delimited field ``number`` of a serialized message, as a view of ``raw``,
    and the message's other fields (re-serialized by concatenation). ValueError on malformed input."""
    view = memoryview(raw)
    found = view[0:0]
    rest: list[memoryview] = []
    pos = 0
    while pos < len(raw):
        start = pos
        key, pos = _read_varint(raw, pos)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _read_varint(raw, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(raw, pos)
            if pos + length > len(raw):
                raise ValueError("truncated message")
            if key >> 3 == number:
                found = view[pos:pos + length]
                pos += length
                continue
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > len(raw):
            raise ValueError("truncated message")
        rest.append(view[start:pos])
    return found, b"".join(rest)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("malformed varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
