from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectFacesRequest(_message.Message):
    __slots__ = ("image", "content_type", "min_confidence", "request_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    content_type: str
    min_confidence: float
    request_id: str
    def __init__(self, image: _Optional[bytes] = ..., content_type: _Optional[str] = ..., min_confidence: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "confidence", "view")
    BOX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    confidence: float
    view: str
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., confidence: _Optional[float] = ..., view: _Optional[str] = ...) -> None: ...

class DetectFacesResponse(_message.Message):
    __slots__ = ("has_face", "faces", "width", "height", "format", "model_name", "model_version", "min_confidence", "views")
    HAS_FACE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    has_face: bool
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    width: int
    height: int
    format: str
    model_name: str
    model_version: str
    min_confidence: float
    views: int
    def __init__(self, has_face: _Optional[bool] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., min_confidence: _Optional[float] = ..., views: _Optional[int] = ...) -> None: ...
