"""The outcome of a media item: its words (what logs and the spool say), and which are tried again."""

from __future__ import annotations

import grpc

from gateway.outcome import NotKept, Outcome
from gateway.processing import _TRANSIENT_CODES, rpc_outcome


def test_the_words_are_the_ones_the_logs_and_the_spool_have_always_used() -> None:
    assert [o.value for o in Outcome] == [
        "saved", "already_saved", "no_face", "unsupported", "download_failed", "rejected", "too_large", "erased",
        "refused", "gave_up", "unavailable", "busy", "store_failed", "out_of_time", "error",
    ]
    assert Outcome("no_face") is Outcome.NO_FACE and Outcome.SAVED == "saved"  # read back from a spool entry
    assert f"spooled:{Outcome.UNAVAILABLE}" == "spooled:unavailable"


def test_only_failures_of_the_moment_are_retried() -> None:
    retried = {o for o in Outcome if o.retryable}
    assert retried == {Outcome.UNAVAILABLE, Outcome.BUSY, Outcome.STORE_FAILED, Outcome.OUT_OF_TIME, Outcome.ERROR}
    assert all(o.final != o.retryable for o in Outcome)
    # Giving up is final, and counted as a failure: nothing more will be tried.
    assert Outcome.GAVE_UP.final and Outcome.GAVE_UP.counted_as(will_retry=True) == "failed"


def test_a_status_code_is_retried_exactly_when_it_is_transient() -> None:
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        assert rpc_outcome(code).retryable == (code in _TRANSIENT_CODES), code
    assert rpc_outcome(grpc.StatusCode.INVALID_ARGUMENT) is Outcome.REJECTED
    assert rpc_outcome(grpc.StatusCode.OUT_OF_RANGE) is Outcome.TOO_LARGE
    assert rpc_outcome(grpc.StatusCode.RESOURCE_EXHAUSTED) is Outcome.BUSY
    assert rpc_outcome(grpc.StatusCode.DEADLINE_EXCEEDED) is Outcome.UNAVAILABLE
    assert rpc_outcome(grpc.StatusCode.INTERNAL) is Outcome.ERROR
    assert rpc_outcome(grpc.StatusCode.UNIMPLEMENTED) is Outcome.REFUSED


def test_not_kept_carries_the_outcome_the_sentence_and_why() -> None:
    stop = NotKept(Outcome.NO_FACE, "No face found in your photo, so I didn't keep it.", "0 faces")
    assert (stop.outcome, stop.detail) == (Outcome.NO_FACE, "0 faces") and str(stop) == "no_face: 0 faces"
