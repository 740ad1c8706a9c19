"""Who sent a message, as the one id every stored key is filed under.

The id becomes a directory (and later an S3 prefix), so it is the line between one user's media and
everyone else's: only ids that are plainly valid get through, and everything else is refused rather
than cleaned up. All id schemes live in this module: WhatsApp is moving from phone numbers to
business-scoped user ids, and adding one should mean adding a branch here and nowhere else.

One function per scheme, and the channel is part of the id wherever it is not WhatsApp: a WhatsApp id is
the bare number (``15551234567``, filed under ``whatsapp/15551234567/``, as it always was), a Telegram id
is ``telegram/{user id}`` (filed under ``telegram/{user id}/``). So a Telegram user whose id happens to be
digits that are also someone's WhatsApp number can never reach that person's media, markers or spool
entries: every store, privacy and spool call is keyed by the whole string, and nothing has to remember to
pass a channel beside it (``gateway.storage.keys.sender_prefix`` turns either form into the folder).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# E.164 numbers have at most 15 digits; real WhatsApp numbers have well over 6 (country code + subscriber).
_PHONE_DIGITS = re.compile(r"[0-9]{6,15}")
_WHATSAPP_PREFIX = "whatsapp:"
# Telegram user ids are positive integers of at most 52 significant bits (Bot API, "User.id").
_TELEGRAM_USER_ID_MAX = 2**52
TELEGRAM = "telegram"
WHATSAPP = "whatsapp"


class InvalidSender(ValueError):
    """The webhook names no sender id we can safely file media under."""


def sender_id(form: Mapping[str, str]) -> str:
    """The sender's WhatsApp id (digits only), from ``WaId`` or else ``From``.

    Never ``AccountSid``: that is our own Twilio account, identical for every user. When ``WaId`` is
    present it is the authority and is not second-guessed from ``From``; an invalid ``WaId`` is refused
    instead of falling back, so a malformed field can never steer which prefix is used.
    """
    wa_id = (form.get("WaId") or "").strip()
    if wa_id:
        return _phone_digits(wa_id, "WaId")
    sender = (form.get("From") or "").strip()
    if not sender:
        raise InvalidSender("the webhook has neither WaId nor From")
    if sender.startswith(_WHATSAPP_PREFIX):
        sender = sender[len(_WHATSAPP_PREFIX):]
    # Business-scoped user ids (no phone number) would be recognised here, before the phone-number rule.
    if sender.startswith("+"):
        sender = sender[1:]
    return _phone_digits(sender, "From")


def _phone_digits(value: str, field: str) -> str:
    # fullmatch on an ASCII class: str.isdigit() would also accept other scripts' digits and superscripts.
    if not _PHONE_DIGITS.fullmatch(value):
        raise InvalidSender(f"{field} is not a plausible WhatsApp number ({len(value)} characters)")
    return value


def telegram_sender_id(user_id: object) -> str:
    """The sender id of a Telegram user (``message.from.id``): ``telegram/{id}``.

    Only a genuine positive integer is accepted (not a bool, not a string of digits, not a float): the id
    comes from JSON that anyone who knows the webhook URL and secret could shape.
    """
    if type(user_id) is not int or not 0 < user_id < _TELEGRAM_USER_ID_MAX:
        raise InvalidSender("from.id is not a Telegram user id")
    return f"{TELEGRAM}/{user_id}"


def parse_sender_argument(value: str) -> str:
    """A sender as an operator types it (``+15551234567``, ``15551234567``, ``telegram:123``, ``telegram/123``)."""
    for prefix in (f"{TELEGRAM}:", f"{TELEGRAM}/"):
        if value.startswith(prefix):
            digits = value[len(prefix):]
            if not digits.isascii() or not digits.isdigit():
                raise InvalidSender("a Telegram id is digits only")
            return telegram_sender_id(int(digits))
    return sender_id({"From": value})


def mask_phone(value: str) -> str:
    """Hide all but the last 4 digits, so logs can still tell two users apart without holding their numbers."""
    digits = re.sub(r"[^0-9]", "", value)
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


def redact_sender(text: str, sender: str) -> str:
    """``text`` with every occurrence of the sender's id masked: storage errors name the path or key they
    failed on, and those start with the full number (whatsapp/<id>/...)."""
    if not sender:
        return text
    # A Telegram sender's bare user id appears in paths after "telegram/": mask it wherever it stands.
    bare = sender.rsplit("/", 1)[-1]
    return text.replace(bare, mask_phone(bare))
