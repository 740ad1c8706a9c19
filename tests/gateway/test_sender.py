"""Sender-id normalization: the one function that decides which prefix a message may write under."""

from __future__ import annotations

import pytest

from gateway.sender import InvalidSender, mask_phone, sender_id


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"WaId": "15551234567", "From": "whatsapp:+15551234567"}, "15551234567"),
        ({"From": "whatsapp:+15551234567"}, "15551234567"),  # no WaId: digits of From
        ({"From": "+447700900123"}, "447700900123"),
        ({"From": "whatsapp:4915123456789"}, "4915123456789"),
        ({"WaId": " 15551234567 ", "From": ""}, "15551234567"),
        ({"WaId": "", "From": "whatsapp:+15551234567"}, "15551234567"),
        ({"WaId": "123456", "From": "whatsapp:+123456"}, "123456"),  # shortest accepted
        ({"WaId": "123456789012345"}, "123456789012345"),  # E.164 maximum, 15 digits
        ({"From": "whatsapp:+15551234567\n"}, "15551234567"),  # surrounding whitespace is trimmed first
    ],
)
def test_valid_senders(form: dict[str, str], expected: str) -> None:
    assert sender_id(form) == expected


@pytest.mark.parametrize(
    "form",
    [
        {"From": "whatsapp:+1../../etc"},
        {"From": "whatsapp:+15551234567/../../x"},
        {"From": "whatsapp:../15551234567"},
        {"From": "whatsapp:+1555 1234567"},
        {"From": "whatsapp:++15551234567"},
        {"From": "whatsapp:+"},
        {"From": "whatsapp:+12345"},  # too short
        {"From": "whatsapp:+1234567890123456"},  # 16 digits: longer than E.164
        {"From": "whatsapp:+１５５５１２３４５６７"},  # full-width digits: str.isdigit() would say yes
        {"From": "whatsapp:+¹²³⁴⁵⁶⁷"},
        {"From": "messenger:12345678"},
        {"From": ""},
        {},
        {"WaId": "1../../etc", "From": "whatsapp:+15551234567"},  # a bad WaId is not rescued by From
        {"WaId": "abc", "From": "whatsapp:+15551234567"},
        {"WaId": "-15551234567"},
    ],
)
def test_refused_senders(form: dict[str, str]) -> None:
    with pytest.raises(InvalidSender):
        sender_id(form)


def test_account_sid_is_never_the_sender() -> None:
    with pytest.raises(InvalidSender):
        sender_id({"AccountSid": "AC" + "1f" * 16})


@pytest.mark.parametrize(
    ("value", "masked"),
    [("15551234567", "*******4567"), ("whatsapp:+15551234567", "*******4567"), ("1234", "****"), ("", "")],
)
def test_mask_phone_keeps_only_the_last_four_digits(value: str, masked: str) -> None:
    assert mask_phone(value) == masked
