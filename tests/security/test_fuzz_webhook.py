"""Fuzzing the webhook form and the sender id with hypothesis: any input ends in a value or a clear refusal.

Bounded (max_examples, no deadline surprises) so the whole module runs in seconds in `make test`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import create_app
from gateway.message import InvalidWebhook
from gateway.whatsapp.form import MAX_MEDIA, parse_webhook
from gateway.sender import InvalidSender, mask_phone, sender_id
from tests.fixtures.gateway import gateway_env, media_form, reply_of, signed_post

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELD_NAMES = ["MessageSid", "WaId", "From", "To", "NumMedia", "Body", "ProfileName", "MessageType",
               *(f"MediaUrl{n}" for n in range(11)), *(f"MediaContentType{n}" for n in range(11))]
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789+:whatsap ٠١٢³", max_size=20),  # digits from other scripts, superscripts
    st.sampled_from(["", " ", "whatsapp:+", "+", "whatsapp:+15551234567", "15551234567", "-1", "99999999999",
                     "1e3", "١٢٣٤٥٦٧", "²³⁴⁵⁶⁷⁸", "../../etc", "a/b", "\x00", "MM" + "0" * 32]),
)
forms = st.dictionaries(st.sampled_from(FIELD_NAMES), nasty_text, max_size=12)


@FAST
@given(forms)
def test_parse_webhook_returns_a_valid_message_or_refuses(form: dict[str, str]) -> None:
    try:
        message = parse_webhook(form)
    except (InvalidWebhook, InvalidSender):
        return
    assert re.fullmatch(r"(SM|MM)[0-9a-fA-F]{32}", message.message_sid)
    assert re.fullmatch(r"[0-9]{6,15}", message.sender_id)
    assert len(message.media) <= MAX_MEDIA
    assert [item.index for item in message.media] == list(range(len(message.media)))
    for item in message.media:
        assert ";" not in item.content_type and item.content_type == item.content_type.lower()


@FAST
@given(st.dictionaries(st.sampled_from(["WaId", "From"]), nasty_text, max_size=2))
def test_sender_id_is_plain_ascii_digits_or_refused(form: dict[str, str]) -> None:
    try:
        value = sender_id(form)
    except InvalidSender:
        return
    assert re.fullmatch(r"[0-9]{6,15}", value)  # safe as a path segment and S3 prefix


@FAST
@given(st.from_regex(r"[1-9][0-9]{5,14}", fullmatch=True), st.sampled_from(["whatsapp:+", "+", "whatsapp:", ""]))
def test_every_spelling_of_a_number_normalizes_to_its_digits(digits: str, prefix: str) -> None:
    assert sender_id({"From": f"{prefix}{digits}"}) == digits
    # WaId is the authority over From.
    assert sender_id({"WaId": digits, "From": "whatsapp:+19999999999"}) == digits


@FAST
@given(st.text(max_size=30))
def test_mask_phone_shows_at_most_the_last_four_digits(value: str) -> None:
    digits = re.sub(r"[^0-9]", "", value)
    masked = mask_phone(value)
    assert len(masked) == len(digits)
    assert masked[-4:] == (digits[-4:] if len(digits) > 4 else "*" * len(digits))
    assert set(masked[:-4]) <= {"*"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """Media hosts allowlisted but nothing listening: every fetch fails fast, and every service is down."""
    root: Path = tmp_path_factory.mktemp("fuzz")
    application = create_app(gateway_env(root / "media", MEDIA_404_RETRY_DELAYS_S="", WEBHOOK_BUDGET_S="2",
                                         DOWNLOAD_CONNECT_TIMEOUT_S="0.2"))
    yield application
    application.extensions["mediabot"].close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms)
def test_any_signed_form_gets_twiml_through_the_real_app(app: Flask, fields: dict[str, str]) -> None:
    """Signed garbage still gets a 200 with a readable reply: the parser's refusals reach the user, not a 500."""
    form = {**media_form([]), **fields}
    form = {key: value.replace("\x00", "") for key, value in form.items()}  # NUL cannot travel in a form
    if any(key.startswith("MediaUrl") for key in form):
        # Point any media at a closed loopback port so nothing leaves the machine.
        form = {key: ("http://127.0.0.1:9/m" if key.startswith("MediaUrl") else value) for key, value in form.items()}
    text = reply_of(signed_post(app.test_client(), form))
    assert text and "Traceback" not in text
