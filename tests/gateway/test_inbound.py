"""Reading the webhook form: MessageSid and media fields, validated before anything acts on them."""

from __future__ import annotations

import pytest

from gateway.message import InvalidWebhook
from gateway.whatsapp.form import parse_webhook
from gateway.sender import InvalidSender
from tests.fixtures.gateway import media_form

MM = "MM" + "0123456789abcdef" * 2


def test_reads_every_media_item_in_order() -> None:
    types = ["audio/ogg", "video/mp4", "image/JPEG; x=1"]
    media = [(f"https://api.twilio.com/m/{n}", ct) for n, ct in enumerate(types)]
    message = parse_webhook(media_form(media, message_sid=MM, ProfileName=" Ana ", Body="hi"))
    assert message.message_sid == MM
    assert message.sender_id == "15551234567"
    assert message.profile_name == "Ana"
    assert message.body == "hi"
    assert message.message_type == "audio"
    assert [(m.index, m.url, m.content_type) for m in message.media] == [
        (0, "https://api.twilio.com/m/0", "audio/ogg"),
        (1, "https://api.twilio.com/m/1", "video/mp4"),
        (2, "https://api.twilio.com/m/2", "image/jpeg"),
    ]


def test_ten_media_items_are_all_read_and_more_are_capped() -> None:
    media = [(f"https://api.twilio.com/m/{n}", "audio/ogg") for n in range(10)]
    form = media_form(media, message_sid=MM)
    assert [m.index for m in parse_webhook(form).media] == list(range(10))
    form["NumMedia"] = "25"
    assert len(parse_webhook(form).media) == 10


def test_a_declared_item_without_url_is_kept_so_it_gets_an_answer() -> None:
    form = media_form([], message_sid=MM, NumMedia="1")
    (item,) = parse_webhook(form).media
    assert item.url == "" and item.content_type == ""


@pytest.mark.parametrize(
    "sid",
    ["", "SM123", "XX" + "0" * 32, "MM" + "0" * 31, "MM" + "0" * 33, "MM" + "g" * 32, "MM../../" + "0" * 26,
     "mm" + "0" * 32, " MM" + "0" * 32 + "/x"],
)
def test_message_sid_must_be_a_twilio_message_sid(sid: str) -> None:
    with pytest.raises(InvalidWebhook):
        parse_webhook(media_form([], message_sid=MM, MessageSid=sid))


@pytest.mark.parametrize("sid", ["SM" + "0123456789abcdef" * 2, "MM" + "0123456789ABCDEF" * 2])
def test_sm_and_mm_sids_are_accepted(sid: str) -> None:
    assert parse_webhook(media_form([], message_sid=sid)).message_sid == sid


@pytest.mark.parametrize("count", ["-1", "x", "1.5", "٣"])
def test_num_media_must_be_a_plain_number(count: str) -> None:
    with pytest.raises(InvalidWebhook):
        parse_webhook(media_form([], message_sid=MM, NumMedia=count))


def test_a_hostile_sender_is_refused() -> None:
    with pytest.raises(InvalidSender):
        parse_webhook(media_form([], message_sid=MM, From="whatsapp:+1../../etc", WaId=""))
