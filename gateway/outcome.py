"""What became of one media item: one closed set of outcomes, each knowing whether it is final and how it counts.

The words are the values, so the log lines ("outcome": "saved"), the spool's records and the webhook's
summary ("spooled:unavailable") read as they always did; a StrEnum compares equal to its word. Whether an
item is tried again later is a property of its outcome, not a flag each caller sets: a final outcome is
recorded in the spool entry and never retried, a retryable one keeps the entry for the background worker.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """One item's outcome. Each member: its word, whether trying again later may change it, and the
    ``outcome`` label of mediabot_gateway_media_outcomes_total it counts as once final."""

    # Kept, or known kept.
    SAVED = ("saved", False, "saved")  # a new object stored
    ALREADY_SAVED = ("already_saved", False, "duplicate")  # a replay found the object a delivery stored
    # Final answers about the input: nothing stored, nothing to retry.
    NO_FACE = ("no_face", False, "no_face")  # a photo the detector found no face in
    UNSUPPORTED = ("unsupported", False, "rejected")  # a kind of media the bot does not keep
    DOWNLOAD_FAILED = ("download_failed", False, "rejected")  # a URL refused, gone, or media over MAX_MEDIA_BYTES
    REJECTED = ("rejected", False, "rejected")  # the service said the input is not what it claims (INVALID_ARGUMENT)
    TOO_LARGE = ("too_large", False, "rejected")  # the service said the input is too long or too big for it
    ERASED = ("erased", False, "rejected")  # the sender erased their data after sending it (gateway.privacy)
    REFUSED = ("refused", False, "failed")  # a service answered with a setup error (NOT_FOUND, PERMISSION_DENIED...)
    # The intake stopped trying: INTAKE_MAX_ATTEMPTS attempts (the poison cap) or SPOOL_GIVE_UP_AFTER_S passed
    # while the item was still failing; the user is told to send it again (gateway.intake.attempt).
    GAVE_UP = ("gave_up", False, "failed")
    # Failures of the moment: the spool keeps the item and the worker tries again.
    UNAVAILABLE = ("unavailable", True, "failed")  # a service or the media host down, slow or answering 5xx
    BUSY = ("busy", True, "failed")  # no room in MEDIA_MEMORY_MB in time
    STORE_FAILED = ("store_failed", True, "failed")  # the store could not be read or written
    OUT_OF_TIME = ("out_of_time", True, "failed")  # the webhook's budget ran out before the service call
    ERROR = ("error", True, "failed")  # a bug, or a service failing mid-call (UNKNOWN, INTERNAL, ABORTED...)

    retryable: bool
    _counted_as: str

    def __new__(cls, word: str, retryable: bool, counted_as: str) -> Outcome:
        member = str.__new__(cls, word)
        member._value_ = word
        member.retryable = retryable
        member._counted_as = counted_as
        return member

    @property
    def final(self) -> bool:
        return not self.retryable

    def counted_as(self, *, will_retry: bool) -> str:
        """The metrics label of this outcome: a retryable one is "retried" while the spool keeps the item and
        "failed" once it does not; a final one is saved, duplicate, no_face, rejected or failed."""
        if self.retryable:
            return "retried" if will_retry else "failed"
        return self._counted_as


class NotKept(Exception):  # noqa: N818 (an outcome, not an error: most are final answers about the input)
    """A step ended the item before anything (new) was stored: its outcome, the user's sentence, and why.

    Raised by the steps of gateway.processing and caught once, where the item's result is made.
    """

    def __init__(self, outcome: Outcome, reply: str, detail: str = "") -> None:
        super().__init__(f"{outcome}: {detail}" if detail else str(outcome))
        self.outcome = outcome
        self.reply = reply
        self.detail = detail
