"""After a mixed run through the real gateway and services, the scraped metrics add up.

The gateway's /metrics is scraped through the app; the gRPC services' metrics over their metrics HTTP
server (the same one AUDIO_METRICS_PORT / VISION_METRICS_PORT start). Counters are compared as
differences between a scrape before and one after, because the process registry lives for the session.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from mediabot.grpc_metrics import start_metrics_server
from tests.fixtures.gateway import MediaServer, media_form, reply_of, signed_post
from bench.photo_set import face_photo, no_face_photo

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def total(before: Samples, after: Samples, name: str, **match: str) -> float:
    """The change of ``name`` summed over every label set containing ``match``."""
    names = {key for key in after if key[0] == name and set(match.items()) <= set(key[1])}
    return sum(after[key] - before.get(key, 0.0) for key in names)


@pytest.fixture(scope="module")
def service_metrics_url() -> Iterator[str]:
    server = start_metrics_server("127.0.0.1:0", 0)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()


def scrape(client, service_url: str) -> tuple[Samples, Samples]:  # noqa: ANN001
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    with urllib.request.urlopen(service_url, timeout=5) as answer:
        return parse(response.get_data(as_text=True)), parse(answer.read().decode())


def test_counters_add_up_after_a_mixed_run(
    make_gateway: Callable[..., Flask], audio_server: str, vision_server: str, media_server: MediaServer,
    voice_note: Path, service_metrics_url: str,
) -> None:
    app = make_gateway(AUDIO_SERVICE_ADDR=audio_server, VISION_SERVICE_ADDR=vision_server)
    client = app.test_client()
    urls = {
        "voice": media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg"),
        "face": media_server.add("/face", body=face_photo(), content_type="image/jpeg"),
        "no_face": media_server.add("/no-face", body=no_face_photo(), content_type="image/png"),
        "noise": media_server.add("/noise", body=b"not audio at all" * 64, content_type="audio/ogg"),
    }
    gateway_before, services_before = scrape(client, service_metrics_url)

    voice_form = media_form([(urls["voice"], "audio/ogg")])
    posts = [
        media_form([]), media_form([]),  # two text-only messages
        media_form([], WaId="12"),  # invalid sender
        voice_form,
        voice_form,  # Twilio delivering the same webhook again: found, not stored twice
        media_form([(urls["face"], "image/jpeg"), (urls["no_face"], "image/png")]),
        media_form([(urls["noise"], "audio/ogg"), ("https://api.twilio.com/x", "video/mp4")]),
    ]
    for form in posts:
        reply_of(signed_post(client, form))
    assert signed_post(client, media_form([]), signature="bad").status_code == 403

    gateway_after, services_after = scrape(client, service_metrics_url)
    g = lambda name, **labels: delta(gateway_before, gateway_after, name, **labels)  # noqa: E731
    webhooks = "mediabot_gateway_webhooks_total"
    assert (g(webhooks, result="text_only"), g(webhooks, result="invalid"), g(webhooks, result="media"),
            g(webhooks, result="bad_signature")) == (2, 1, 4, 1)
    assert g("mediabot_gateway_webhook_seconds_count") == 7  # every answered, signed webhook is timed

    received = "mediabot_gateway_media_received_total"
    assert (g(received, media_type="audio"), g(received, media_type="image"), g(received, media_type="other")) == (
        3, 2, 1)
    outcomes = "mediabot_gateway_media_outcomes_total"
    assert g(outcomes, outcome="saved", media_type="audio") == 1
    assert g(outcomes, outcome="saved", media_type="image") == 1
    assert g(outcomes, outcome="duplicate", media_type="audio") == 1
    assert g(outcomes, outcome="no_face", media_type="image") == 1
    assert g(outcomes, outcome="rejected", media_type="audio") == 1
    assert g(outcomes, outcome="rejected", media_type="other") == 1
    # Nothing retried or failed with every service up; every item received has exactly one outcome.
    assert total(gateway_before, gateway_after, outcomes, outcome="retried") == 0
    assert total(gateway_before, gateway_after, outcomes, outcome="failed") == 0
    assert total(gateway_before, gateway_after, outcomes) == total(gateway_before, gateway_after, received)

    stages = "mediabot_gateway_stage_seconds_count"
    # Downloads: voice, face, no-face, noise (the replay finds its object first; the video is never fetched).
    assert (g(stages, stage="download"), g(stages, stage="convert"), g(stages, stage="detect"),
            g(stages, stage="store")) == (4, 2, 2, 2)
    # The spool gauges are read from the spool at scrape time: empty again after a run with no failures.
    assert gateway_after[("mediabot_gateway_spool_depth", ())] == 0
    assert gateway_after[("mediabot_gateway_spool_oldest_age_seconds", ())] == 0

    s = lambda name, **labels: delta(services_before, services_after, name, **labels)  # noqa: E731
    handled = "grpc_server_handled_total"
    audio, vision = "mediabot.v1.AudioService", "mediabot.v1.VisionService"
    assert s(handled, grpc_service=audio, grpc_method="ConvertToWav", grpc_code="OK") == 1
    assert s(handled, grpc_service=audio, grpc_method="ConvertToWav", grpc_code="INVALID_ARGUMENT") == 1
    assert s(handled, grpc_service=vision, grpc_method="DetectFaces", grpc_code="OK") == 2
    assert s("grpc_server_handling_seconds_count", grpc_service=audio, grpc_method="ConvertToWav") == 2
    assert s("grpc_server_handling_seconds_count", grpc_service=vision, grpc_method="DetectFaces") == 2


def test_outcome_words_are_checked() -> None:
    from gateway import metrics
    from gateway.outcome import Outcome

    with pytest.raises(ValueError, match="unknown stage"):
        with metrics.stage_timer("dowload"):
            pass
    assert Outcome.UNAVAILABLE.counted_as(will_retry=True) == "retried"
    assert Outcome.UNAVAILABLE.counted_as(will_retry=False) == "failed"
    assert Outcome.DOWNLOAD_FAILED.counted_as(will_retry=False) == "rejected"
    assert Outcome.REFUSED.counted_as(will_retry=True) == "failed"  # final: retrying is not what will happen
    # Every outcome counts as one of the labels the counter was created with, whatever the spool does next.
    assert {o.counted_as(will_retry=w) for o in Outcome for w in (True, False)} <= set(metrics.OUTCOMES)
