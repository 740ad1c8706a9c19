"""Metadata as x-amz-meta-* headers: typed round trips, ASCII only, and S3's 2 KB budget (pure functions)."""

from __future__ import annotations

import pytest

from gateway.storage import s3_metadata
from gateway.storage.s3_metadata import MAX_BYTES, decode, encode, size_of

KEY = "whatsapp/15551234567/images/20250304T050607Z_MM" + "0" * 32 + "_0.jpg"


def test_every_type_comes_back_as_it_went_in() -> None:
    metadata = {
        "message_sid": "MM" + "0" * 32, "media_index": 3, "profile_name": "123", "min_confidence": 0.5,
        "original": {"content_type": "audio/ogg", "size": 4321}, "faces": [{"box": {"left": 1}}], "flag": True,
        "nothing": None,
    }
    headers, overflow = encode(metadata, KEY)
    assert overflow == {}
    assert headers["x-amz-meta-media-index"] == "3"
    assert headers["x-amz-meta-profile-name"] == '"123"'  # a string that looks like a number stays a string
    assert decode(headers) == (metadata, None)


@pytest.mark.parametrize(
    "text", ["José", "李小龍", "😀", "a\x7fb", "line\nbreak\r", "\ttab", "  edges  ", '"q" \\']
)
def test_values_are_printable_ascii_and_decode_exactly(text: str) -> None:
    headers, _ = encode({"profile_name": text}, KEY)
    value = headers["x-amz-meta-profile-name"]
    assert value.isascii() and value.isprintable() and value == value.strip()
    assert decode(headers)[0] == {"profile_name": text}


def test_header_names_are_read_whatever_case_the_server_returns() -> None:
    fields, _ = decode({"X-Amz-Meta-Profile-Name": '"Ada"', "Content-Type": "image/jpeg", "x-amz-meta-SIZE": "4"})
    assert fields == {"profile_name": "Ada", "size": 4}


def test_a_value_set_by_hand_is_kept_as_text() -> None:
    assert decode({"x-amz-meta-note": "checked by ops"})[0] == {"note": "checked by ops"}


@pytest.mark.parametrize("name", ["Profile", "with-dash", "1st", "", "x" * 65, s3_metadata.OVERFLOW_FIELD])
def test_field_names_a_header_cannot_carry_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="metadata field"):
        encode({name: 1}, KEY)


def test_what_does_not_fit_in_2_kb_overflows_largest_first() -> None:
    faces = [{"box": {"left": i, "top": i, "right": i + 9, "bottom": i + 9}, "confidence": 0.9} for i in range(200)]
    metadata = {"message_sid": "MM" + "0" * 32, "profile_name": "x" * 25, "faces": faces, "big": "y" * 1900}
    headers, overflow = encode(metadata, KEY)
    assert size_of(headers) <= MAX_BYTES
    assert set(overflow) == {"faces", "big"}  # the two largest; the small fields stay readable in headers
    fields, overflow_key = decode(headers)
    assert overflow_key == KEY
    assert {**fields, **overflow} == metadata


def test_a_full_budget_is_used_without_overflow() -> None:
    name = s3_metadata.header_name("note")
    text = "z" * (MAX_BYTES - len(name) - 2)  # the JSON quotes make it exactly MAX_BYTES
    headers, overflow = encode({"note": text}, KEY)
    assert size_of(headers) == MAX_BYTES and overflow == {}
