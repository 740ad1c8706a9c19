"""An object's metadata as S3 user metadata (``x-amz-meta-*`` headers): typed, ASCII-only, within 2 KB.

One header per top-level field, named ``x-amz-meta-`` + the field name with ``_`` written as ``-``
(``profile_name`` -> ``x-amz-meta-profile-name``), whose value is the field's compact JSON with every
non-ASCII character as a ``\\uXXXX`` escape (DEL too, which JSON would leave raw). So a profile name
"José 李" is sent as ``"Jos\\u00e9 \\u674e"`` and read back as "José 李" by ``json.loads``.

JSON escapes rather than RFC 2047 or percent-encoding because not every value is a string: durations
and sizes are numbers, ``audio`` and ``original`` are objects, ``faces`` is a list, and one reversible
rule keeps all of them typed (``"123"`` stays a string, ``123`` a number). The price is that the MinIO
console shows the JSON text; ``python -m gateway.media`` shows the decoded values.

Budget: S3 allows 2 KB of user metadata per object; AWS counts key and value bytes, MinIO the whole
``X-Amz-Meta-...`` header name plus value, so MinIO's count is used. Fields go into headers smallest
first while they fit; the rest (in practice only the ``faces`` of a crowd photo: the detector returns up
to 200) are returned as ``overflow`` for the store to keep in a JSON object beside the media, named by
the ``x-amz-meta-metadata-object`` header. Nothing is cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

PREFIX = "x-amz-meta-"
# What MinIO measures against its limit: the header name as sent (its "X-Amz-Meta-" included) plus the value.
MAX_BYTES = 2048
# The field naming the JSON object that holds the fields that did not fit; never a caller's field.
OVERFLOW_FIELD = "metadata_object"

# snake_case, so the name survives the trip through a header (S3 servers may change the case, never "-").
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")


def encode_value(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("\x7f", "\\u007f")


def header_name(field: str) -> str:
    return PREFIX + field.replace("_", "-")


def encode(metadata: Mapping[str, object], overflow_key: str) -> tuple[dict[str, str], dict[str, object]]:
    """(headers for put_object, the fields that did not fit); ValueError for a field name S3 cannot carry."""
    encoded: list[tuple[int, str, str, object]] = []
    for field, value in metadata.items():
        if not _FIELD.fullmatch(field) or field == OVERFLOW_FIELD:
            raise ValueError(f"metadata field {field!r} cannot be an S3 metadata header")
        name, text = header_name(field), encode_value(value)
        encoded.append((len(name) + len(text), name, text, value))
    # The pointer header costs room too, but only when something overflows.
    pointer = 0
    if sum(item[0] for item in encoded) > MAX_BYTES:
        pointer = len(header_name(OVERFLOW_FIELD)) + len(encode_value(overflow_key))
    headers: dict[str, str] = {}
    overflow: dict[str, object] = {}
    used = 0
    for size, name, text, value in sorted(encoded, key=lambda item: item[0]):
        if used + size + pointer <= MAX_BYTES:
            headers[name] = text
            used += size
        else:
            overflow[name[len(PREFIX):].replace("-", "_")] = value
    if overflow:
        headers[header_name(OVERFLOW_FIELD)] = encode_value(overflow_key)
    return headers, overflow


def decode(headers: Mapping[str, str]) -> tuple[dict[str, object], str | None]:
    """(the fields in ``headers``, the key of the object holding the rest or None).

    A value that is not JSON (someone set it by hand, e.g. in the console) is kept as the text it is.
    """
    fields: dict[str, object] = {}
    overflow_key: str | None = None
    for name, text in headers.items():
        lowered = name.lower()
        if not lowered.startswith(PREFIX):
            continue
        field = lowered[len(PREFIX):].replace("-", "_")
        try:
            value: object = json.loads(text)
        except ValueError:
            value = text
        if field == OVERFLOW_FIELD:
            overflow_key = value if isinstance(value, str) else None
        else:
            fields[field] = value
    return fields, overflow_key


def size_of(headers: Mapping[str, str]) -> int:
    """The user-metadata size as MinIO counts it."""
    return sum(len(name) + len(value) for name, value in headers.items() if name.lower().startswith(PREFIX))
