"""Protobuf's wire format for the one thing protobuf-python cannot do: a large ``bytes`` field without copies.

protobuf-python copies a ``bytes`` field into a message, out of it on every read, and once more to
serialize it: for a 15-minute WAV (29 MB) that is 80 MB more per call than the bytes themselves. The
gateway and the audio service therefore send and read the media field of their messages here, and let
protobuf handle only the small fields. Concatenating serialized fields is how protobuf itself merges
messages, so the bytes on the wire are exactly those of the message the generated code would build
(tests/gateway/test_audio_client.py checks both directions against protobuf).
"""

from __future__ import annotations

_LENGTH_DELIMITED = 2


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
