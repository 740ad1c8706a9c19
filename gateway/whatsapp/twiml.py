"""The WhatsApp reply: TwiML in the webhook's response, which Twilio sends on as WhatsApp messages."""

from __future__ import annotations

from flask import Response
from twilio.twiml.messaging_response import MessagingResponse


def twiml(text: str, *more: str) -> str:
    """The reply as TwiML: one <Message> per text, each a WhatsApp message of its own (the reply first;
    a privacy notice, when there is one, after it rather than inside it)."""
    response = MessagingResponse()
    for one in (text, *more):
        response.message(one)
    return str(response)


def twiml_response(text: str, *more: str) -> Response:
    """A 200 carrying ``twiml(text, *more)``: what every WhatsApp webhook answer is."""
    return Response(twiml(text, *more), status=200, mimetype="text/xml")
