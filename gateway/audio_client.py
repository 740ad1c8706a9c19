"""AudioService.ConvertToWav with the voice note and its WAV passed through, not copied through messages.

protobuf-python copies a ``bytes`` field into a message and copies it out again on every read, and the
generated stub serializes the message to yet another copy: for a 15-minute voice note (a 29 MB WAV) that
is 80 MB more per item than the bytes themselves, times the gateway's threads. So this client speaks the
same wire format (mediabot.wire) with gRPC's raw (serializer-less) method:
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
from mediabot.wire import split_bytes_field, with_bytes_field

_METHOD = "/" + audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name + "/ConvertToWav"
_AUDIO_FIELD = audio_pb2.ConvertToWavRequest.DESCRIPTOR.fields_by_name["audio"].number
_WAV_FIELD = audio_pb2.ConvertToWavResponse.DESCRIPTOR.fields_by_name["wav"].number


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
