"""Fuzzing Telegram updates with hypothesis: any JSON ends in a message with safe ids, None, or a refusal.

An update's values reach a storage key (from.id, chat id, message id), a spool file name and a Bot API
request (file_id), so whatever the JSON holds must come out as one of those plain shapes or be refused.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.message import InvalidWebhook
from gateway.sender import InvalidSender
from gateway.storage.keys import MediaRef
from gateway.telegram.updates import FILE_SCHEME, inbound_from_form, parse_update

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**63), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["../../x", "/etc/passwd", "http://evil/x", "AgAC_-ok", "123", "-5"]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
file_objects = st.fixed_dictionaries(
    {"file_id": scalars, "file_unique_id": scalars},
    optional={"file_size": scalars, "mime_type": scalars, "duration": scalars, "width": scalars, "height": scalars},
)
messages = st.fixed_dictionaries(
    {"message_id": scalars, "date": scalars, "chat": st.fixed_dictionaries({"id": scalars, "type": scalars})},
    optional={
        "from": st.fixed_dictionaries({"id": scalars, "is_bot": scalars, "first_name": scalars}),
        "text": scalars, "voice": file_objects, "audio": file_objects, "document": file_objects,
        "photo": st.lists(file_objects, max_size=3), "sticker": json_values, "media_group_id": scalars,
    },
)
updates = st.one_of(json_values, st.fixed_dictionaries({"update_id": scalars, "message": messages}),
                    st.fixed_dictionaries({"update_id": scalars, "edited_message": messages}))


@FAST
@given(updates)
def test_parse_update_returns_safe_ids_none_or_refuses(update: object) -> None:
    try:
        found = parse_update(update, max_photo_bytes=16 * 1024 * 1024, id_key="fuzz-secret")
    except (InvalidWebhook, InvalidSender):
        return
    if found is None:
        return
    message = found.inbound
    assert re.fullmatch(r"telegram/[0-9]{1,16}", message.sender_id)
    assert re.fullmatch(r"TG[0-9a-f]{32}", message.message_sid)
    for item in message.media:
        assert re.fullmatch(re.escape(FILE_SCHEME) + r"[A-Za-z0-9_-]{1,256}", item.url)
        MediaRef(message.sender_id, "audio", message.message_sid, item.index)  # a valid key, never InvalidKey
    assert inbound_from_form(found.form) == message  # the spooled form reads back to the same message


@FAST
@given(st.dictionaries(st.sampled_from(["MessageSid", "UserId", "ChatId", "MessageId", "FileId", "ContentType", "Text"]),
                       st.text(max_size=30), max_size=6))
def test_a_tampered_spool_form_is_refused_or_safe(form: dict[str, str]) -> None:
    try:
        message = inbound_from_form(form)
    except (InvalidWebhook, InvalidSender):
        return
    assert re.fullmatch(r"telegram/[0-9]{1,16}", message.sender_id)
    assert re.fullmatch(r"TG[0-9a-f]{32}", message.message_sid)
