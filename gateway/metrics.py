"""What the gateway is doing, in Prometheus metrics: GET /metrics.

Under gunicorn every worker is its own process with its own counters, and a scrape reaches only one of
them. prometheus-client's multiprocess mode is the library's answer: when PROMETHEUS_MULTIPROC_DIR is set
(an empty, writable directory, wiped before gunicorn starts), every worker writes its values to mmap'd
files there and /metrics, in whichever worker answers, sums them all. Without the variable (tests, the
Flask dev server) the process's default registry is served as it is.

The two spool gauges are read at scrape time from the intake the app was built with (gateway.intake:
``depth()`` and ``oldest_age_s()``, a directory listing for the spool, so any worker reports the same).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.outcome import Outcome

bp = Blueprint("metrics", __name__)

# Final (or, for "retried", provisional) outcome of one media item, in the words of issue 6 (each
# gateway.outcome.Outcome says which it counts as):
# saved: a new object stored; duplicate: a replay found the object already stored; no_face: a photo with no
# face (final, nothing stored); rejected: the input is not something we keep (undecodable, unsupported type,
# too large, disallowed URL); retried: handed to the background worker to try again; failed: given up.
OUTCOMES = ("saved", "duplicate", "no_face", "rejected", "retried", "failed")
MEDIA_TYPES = ("audio", "image", "other")
STAGES = ("download", "convert", "detect", "store")


class _Result(Protocol):
    outcome: Outcome


class _Item(Protocol):
    index: int
    content_type: str


WEBHOOKS = Counter(
    "mediabot_gateway_webhooks_total",
    "Webhook requests by result: media, text_only, privacy (MY DATA, DELETE), invalid (a signed form we cannot act on), "
    "bad_signature.",
    ["result"],
)
MEDIA_RECEIVED = Counter(
    "mediabot_gateway_media_received_total", "Media items in verified webhooks, by type.", ["media_type"]
)
MEDIA_OUTCOMES = Counter(
    "mediabot_gateway_media_outcomes_total", "Media items by outcome and type.", ["outcome", "media_type"]
)
STAGE_SECONDS = Histogram(
    "mediabot_gateway_stage_seconds",
    "Latency of one step of one media item: download (from Twilio), convert (audio RPC), detect (vision RPC), "
    "store (the object write).",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
)
WEBHOOK_SECONDS = Histogram(
    "mediabot_gateway_webhook_seconds",
    "Time from a webhook's arrival to its reply (Twilio gives up at 15 s).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
)

# Pre-create the labelled children so a scrape shows zeros instead of missing series before the first event.
for _outcome in OUTCOMES:
    for _media_type in MEDIA_TYPES:
        MEDIA_OUTCOMES.labels(_outcome, _media_type)
for _media_type in MEDIA_TYPES:
    MEDIA_RECEIVED.labels(_media_type)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)


def media_type_of(content_type: str) -> str:
    """The ``media_type`` label for a declared content type (a bounded set: labels must not explode)."""
    if content_type.startswith("audio/"):
        return "audio"
    if content_type.startswith("image/"):
        return "image"
    return "other"


def record_attempt(media: Iterable[_Item], results: Mapping[int, _Result], *, will_retry: bool) -> None:
    """Count every item an attempt (webhook or worker) processed: one outcome per item per attempt."""
    for item in media:
        result = results.get(item.index)
        if result is not None:
            label = result.outcome.counted_as(will_retry=will_retry)
            MEDIA_OUTCOMES.labels(label, media_type_of(item.content_type)).inc()


def record_webhook_answer(outcome: str, started: float) -> None:
    """Count one answered webhook by kind and observe its latency (``started``: time.monotonic())."""
    if outcome in ("invalid_sender", "invalid_message"):
        result = "invalid"
    elif outcome == "text_only":
        result = "text_only"
    elif outcome.startswith("privacy_"):
        result = "privacy"
    else:
        result = "media"
    WEBHOOKS.labels(result).inc()
    WEBHOOK_SECONDS.observe(time.monotonic() - started)


def record_media_received(media: Iterable[_Item]) -> None:
    """Count a verified webhook's media items by type, once per delivery."""
    for item in media:
        MEDIA_RECEIVED.labels(media_type_of(item.content_type)).inc()


def record_webhook(result: str) -> None:
    WEBHOOKS.labels(result).inc()


@contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    """``with stage_timer("download"): ...`` observes the block's duration, exceptions included."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    with STAGE_SECONDS.labels(stage).time():
        yield


# -- the intake, read at scrape time -------------------------------------------------------------------


class Queue(Protocol):
    """What the intake gauges read (gateway.intake.Intake has both)."""

    def depth(self) -> int: ...

    def oldest_age_s(self) -> float: ...


class _IntakeCollector(Collector):
    """The spool gauges of one app's intake (gateway.intake.Intake), for one scrape."""

    def __init__(self, intake: Queue) -> None:
        self._intake = intake

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("mediabot_gateway_spool_depth", "Webhooks spooled and not yet done.",
                                value=self._intake.depth())
        yield GaugeMetricFamily(
            "mediabot_gateway_spool_oldest_age_seconds",
            "Age of the oldest spooled webhook (0 when the spool is empty).",
            value=self._intake.oldest_age_s(),
        )


class _ProcessCollector(Collector):
    """This process's default registry (the counters above), inside a scrape's own registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def registry(intake: Queue) -> CollectorRegistry:
    """What one scrape reports: every worker's values in multiprocess mode, this process's otherwise, and the
    intake's gauges. A fresh registry per scrape (the documented multiprocess pattern), so nothing about the
    app's intake is kept in a module global."""
    scrape = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(scrape)
    else:
        scrape.register(_ProcessCollector())
    scrape.register(_IntakeCollector(intake))
    return scrape


@bp.get("/metrics")
def metrics() -> Response:
    intake = current_app.extensions["mediabot"].intake
    return Response(generate_latest(registry(intake)), status=200, mimetype=None, content_type=CONTENT_TYPE_LATEST)
