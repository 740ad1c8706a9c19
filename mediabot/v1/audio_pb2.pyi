from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ConvertToWavRequest(_message.Message):
    __slots__ = ("audio", "content_type", "sample_rate_hz", "channels", "request_id")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    content_type: str
    sample_rate_hz: int
    channels: int
    request_id: str
    def __init__(self, audio: _Optional[bytes] = ..., content_type: _Optional[str] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ConvertToWavResponse(_message.Message):
    __slots__ = ("wav", "sample_rate_hz", "channels", "bits_per_sample", "duration_ms", "source_format", "source_codec")
    WAV_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CODEC_FIELD_NUMBER: _ClassVar[int]
    wav: bytes
    sample_rate_hz: int
    channels: int
    bits_per_sample: int
    duration_ms: int
    source_format: str
    source_codec: str
    def __init__(self, wav: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., bits_per_sample: _Optional[int] = ..., duration_ms: _Optional[int] = ..., source_format: _Optional[str] = ..., source_codec: _Optional[str] = ...) -> None: ...
