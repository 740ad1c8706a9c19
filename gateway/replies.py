"""Every sentence the bot says, whichever channel carries it (TwiML for WhatsApp: gateway.whatsapp.twiml).

Kept in one module so the wording stays consistent and the tests can assert on the same constants
the webhook uses. Each media item gets one sentence; a message gets one reply made of them.
"""

from __future__ import annotations

import grpc

from gateway.download import Failure

HELP = (
    "Send me a voice message and I'll keep it as a WAV file, or a photo: I keep photos that show a face."
)
INVALID_SENDER = "Sorry, I couldn't tell who sent this message, so I didn't keep anything."
INVALID_MESSAGE = "Sorry, I couldn't read this message, so I didn't keep anything."
INTERNAL_ERROR = "Sorry, something went wrong on my side. Please send it again."
OUT_OF_TIME = "I ran out of time for your {what}. Please send it again."
NO_FACE = "No face found in your photo, so I didn't keep it."
AUDIO_UNREADABLE = "Sorry, I couldn't read that audio file."
PHOTO_UNREADABLE = "Sorry, I couldn't read that photo."
AUDIO_TOO_BIG = "That voice message is too long or too big for me to keep."
PHOTO_TOO_BIG = "That photo is too big for me to check."
AUDIO_UNAVAILABLE = "I couldn't process your voice message right now. Please send it again."
PHOTO_UNAVAILABLE = "I couldn't check your photo right now. Please send it again."
PHOTO_FORMAT = "I can only keep JPEG, PNG and WebP photos."
STORE_FAILED = "I couldn't save your {what} right now. Please send it again."
PRIVACY_UNAVAILABLE = "I can't reach what I keep right now, so I couldn't do that. Please send it again later."
UNSUPPORTED = "I can't keep {what}, only voice messages and photos."

# The intake gave up on an item that kept failing (gateway.outcome.Outcome.GAVE_UP): nothing more will happen.
GAVE_UP_VOICE = "Sorry, I couldn't save your voice message. Please send it again."
GAVE_UP_PHOTO = "Sorry, I couldn't check your photo. Please send it again."
GAVE_UP_OTHER = "Sorry, I couldn't finish with your message. Please send it again."

VOICE = "voice message"
PHOTO = "photo"


# A dependency was down or slow: the webhook is spooled and the background worker will finish the job.
RECEIVED_VOICE = "Got your voice message: I'll save it shortly."
RECEIVED_PHOTO = "Got your photo: I'll check it for a face and keep it shortly."
RECEIVED_OTHER = "Got your message: I'll finish with it shortly."


def received(content_type: str) -> str:
    """The "will be done shortly" sentence for an item of ``content_type``."""
    if content_type.startswith("audio/"):
        return RECEIVED_VOICE
    return RECEIVED_PHOTO if content_type.startswith("image/") else RECEIVED_OTHER


def gave_up(content_type: str) -> str:
    """The final sentence for an item the intake stopped retrying (the poison cap, or a day of failures)."""
    if content_type.startswith("audio/"):
        return GAVE_UP_VOICE
    return GAVE_UP_PHOTO if content_type.startswith("image/") else GAVE_UP_OTHER


def saved_audio(duration_ms: int) -> str:
    return f"Saved your voice message ({format_duration(duration_ms)})."


def saved_photo(faces: int) -> str:
    return f"Saved your photo ({faces} face{'' if faces == 1 else 's'} found)."


def erased(what: str) -> str:
    return f"You asked me to erase your data after sending this {what}, so I didn't keep it."


def unsupported(what: str) -> str:
    return UNSUPPORTED.format(what=what)


def download_failed(what: str, failure: Failure, max_bytes: int) -> str:
    if failure is Failure.TOO_LARGE:
        return f"Your {what} is too big for me (over {max_bytes / 1024 / 1024:g} MB)."
    if failure in (Failure.TIMEOUT, Failure.SERVER_ERROR, Failure.CONNECTION):
        return f"I couldn't download your {what} right now. Please send it again."
    # DISALLOWED_URL, NOT_FOUND after retries, REFUSED, HTTP_ERROR: retrying by hand will not help quickly.
    return f"Sorry, I couldn't download your {what}."


def rpc_failed(what: str, code: grpc.StatusCode | None) -> str:
    audio = what == VOICE
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return AUDIO_UNREADABLE if audio else PHOTO_UNREADABLE
    if code is grpc.StatusCode.OUT_OF_RANGE:
        return AUDIO_TOO_BIG if audio else PHOTO_TOO_BIG
    # RESOURCE_EXHAUSTED: the service's queue is full, the media is fine (retried by the spool).
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return AUDIO_UNAVAILABLE if audio else PHOTO_UNAVAILABLE
    return INTERNAL_ERROR


def format_duration(duration_ms: int) -> str:
    """12.4 s under a minute; 3 min 05 s above, where tenths stop mattering."""
    if duration_ms < 60_000:
        return f"{duration_ms / 1000:.1f} s"
    seconds = round(duration_ms / 1000)
    return f"{seconds // 60} min {seconds % 60:02d} s"


def combine(sentences: list[str]) -> str:
    """One reply for the whole message: numbered when it covers several media items."""
    if len(sentences) == 1:
        return sentences[0]
    return "\n".join(f"{n}. {sentence}" for n, sentence in enumerate(sentences, start=1))
