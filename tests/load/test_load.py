"""Load: signed text-only and media webhooks, and Telegram voice updates beside them, at concurrency 16
against the gateway under gunicorn.

Real processes on loopback: gunicorn (2 workers x 8 threads, as deployed) with the real app, the real
audio service converting every voice note with ffmpeg, the filesystem store, a local Telegram Bot API
(gateway.telegram.simulate) serving the Telegram voice notes. Pass criteria are
correctness only (no 5xx, every reply the right one, every voice note stored once, the multiprocess
metrics agreeing); latency is measured and reported (p50/p99/max), never asserted: speed belongs to
benchmarks, and this machine is shared.

Both intakes: the spool (the webhook processes the media itself) and JetStream (a real nats-server, and
LOAD_JETSTREAM_WORKERS worker processes doing the media while the webhook waits for their outcome); the
figures are printed per intake, one line each, and gathered in MEDIABOT_LOAD_REPORT.

Sizes: MEDIABOT_LOAD_TEXT / MEDIABOT_LOAD_MEDIA / MEDIABOT_LOAD_TELEGRAM / MEDIABOT_LOAD_CONCURRENCY. `make soak` runs the issue's
full 1000 / 200 / 16; the defaults below are the short form `make test` runs.
MEDIABOT_LOAD_REPORT=path writes the figures as JSON too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.support import installed_program
from gateway.config import Settings
from gateway.replies import RECEIVED_VOICE
from gateway.whatsapp.simulate import reply_text, sign
from gateway.telegram.simulate import LocalBotApi, file_content, message_update
from gateway.telegram.webhook import SECRET_HEADER
from tests.fixtures.gateway import (
    TEST_ACCOUNT_SID,
    TEST_AUTH_TOKEN,
    MediaServer,
    closed_port_addr,
    free_port,
    media_form,
    media_files,
)

REPO = Path(__file__).resolve().parents[2]
TEXT = int(os.environ.get("MEDIABOT_LOAD_TEXT", "250"))
MEDIA = int(os.environ.get("MEDIABOT_LOAD_MEDIA", "50"))
TELEGRAM = int(os.environ.get("MEDIABOT_LOAD_TELEGRAM", "25"))
CONCURRENCY = int(os.environ.get("MEDIABOT_LOAD_CONCURRENCY", "16"))
# Seconds the media host takes to answer each download (Twilio's media URLs answer in hundreds of ms; the
# local host at once). With it, attempts wait on the network as they do in production, not only on ffmpeg.
MEDIA_DELAY_S = float(os.environ.get("MEDIABOT_LOAD_MEDIA_DELAY_S", "0"))
# Worker processes beside gunicorn with INTAKE=jetstream (k8s runs several replicas; each handles
# WORKER_CONCURRENCY messages at once).
JETSTREAM_WORKERS = int(os.environ.get("LOAD_JETSTREAM_WORKERS", "3"))


@dataclass
class Gunicorn:
    url: str
    media_root: Path
    log: Path
    intake: str = "spool"


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(params=["spool", "jetstream"])
def gunicorn_gateway(request: pytest.FixtureRequest, tmp_path: Path, audio_server: str,
                     bot_api: LocalBotApi) -> Iterator[Gunicorn]:
    from bench.nats_server import NatsServer
    from tests.fixtures.telegram import telegram_env

    intake: str = request.param

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PROMETHEUS_", "TELEGRAM_"))},
        **{k: str(v) for k, v in telegram_env(bot_api).items()},
        "PUBLIC_BASE_URL": url,
        "TRUST_PROXY": "0",
        "TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
        "MEDIA_HOST_ALLOWLIST": "127.0.0.1",
        "AUDIO_SERVICE_ADDR": audio_server,
        "VISION_SERVICE_ADDR": closed_port_addr(),
        "STORAGE": "filesystem",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "SPOOL_DIR": str(tmp_path / "spool"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "LOG_LEVEL": "WARNING",
    }
    nats: NatsServer | None = None
    workers: list[subprocess.Popen[bytes]] = []
    if intake == "jetstream":
        nats = NatsServer(root=tmp_path / "nats")
        nats.start()
        env.update({"INTAKE": "jetstream", "NATS_URL": nats.url})
        # The workers' own metrics stay out of the gateway's multiprocess directory (its scrape is checked).
        worker_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        workers = [_start([sys.executable, "-m", "gateway.intake.worker"], worker_env, tmp_path / f"worker{n}.log")
                   for n in range(JETSTREAM_WORKERS)]
    log = tmp_path / "gunicorn.log"
    command = [str(installed_program("gunicorn", "gunicorn")), "--bind", f"127.0.0.1:{port}", "--workers", "2",
               "--threads", "8", "--timeout", "30", "gateway:create_app()"]
    process = _start(command, env, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gunicorn not up\n{log.read_text()[-3000:]}") from None
                time.sleep(0.1)
        yield Gunicorn(url, tmp_path / "media", log, intake)
    finally:
        for started in [process, *workers]:
            _stop(started)
        if nats is not None:
            nats.stop()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_load(gunicorn_gateway: Gunicorn, media_server: MediaServer, bot_api: LocalBotApi, voice_note: Path,
              capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fixtures.telegram import TG_SECRET

    webhook = f"{gunicorn_gateway.url}/whatsapp"
    voice_url = media_server.add("/voice", body=voice_note.read_bytes(), content_type="audio/ogg",
                                 delay_s=MEDIA_DELAY_S)
    forms: list[dict[str, object]] = [media_form([]) for _ in range(TEXT)]
    forms += [media_form([(voice_url, "audio/ogg")]) for _ in range(MEDIA)]
    # Telegram voice notes from a few users, each served by the local Bot API (NumMedia "tg" marks them).
    forms += [{"MessageSid": f"TG{n:06d}", "NumMedia": "tg",
               "update": message_update(700 + n % 5, **file_content(bot_api, voice_note))} for n in range(TELEGRAM)]
    # Interleave so media, text and both channels share the run instead of arriving in phases.
    forms.sort(key=lambda form: str(form["MessageSid"])[2:])
    local = threading.local()

    def post(form: dict[str, object]) -> tuple[str, int, float, str]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        started = time.perf_counter()
        if form["NumMedia"] == "tg":
            response = session.post(f"{gunicorn_gateway.url}/telegram", json=form["update"],
                                    headers={SECRET_HEADER: TG_SECRET}, timeout=30)
            elapsed = time.perf_counter() - started
            text = str(response.json().get("text")) if response.status_code == 200 else response.text[:200]
            return "tg", response.status_code, elapsed, text
        fields = {k: str(v) for k, v in form.items()}
        signature = sign(webhook, fields, TEST_AUTH_TOKEN)
        response = session.post(webhook, data=fields, headers={"X-Twilio-Signature": signature}, timeout=30)
        elapsed = time.perf_counter() - started
        text = reply_text(response.text) if response.status_code == 200 else response.text[:200]
        return fields["NumMedia"], response.status_code, elapsed, text

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        results = list(pool.map(post, forms))
    wall_s = time.perf_counter() - started

    statuses = [status for _, status, _, _ in results]
    assert [s for s in statuses if s >= 500] == [], gunicorn_gateway.log.read_text()[-3000:]
    assert set(statuses) == {200}
    text_replies = {text for media, _, _, text in results if media == "0"}
    assert len(text_replies) == 1 and "voice message" in text_replies.pop()
    media_replies = [text for media, _, _, text in results if media != "0"]
    # JetStream: a voice note whose worker did not finish within the webhook's budget is answered "shortly"
    # (and told later); the spool's webhook converts it itself.
    answers = ("Saved your voice message (",) + ((RECEIVED_VOICE,) if gunicorn_gateway.intake == "jetstream" else ())
    assert all(t.startswith(answers) for t in media_replies), set(media_replies)
    deferred = sum(1 for t in media_replies if t == RECEIVED_VOICE)

    # One WAV and one sidecar per voice note, in each channel's own folders (the workers may still be at it).
    def stored() -> tuple[int, int]:
        telegram = [p for p in (gunicorn_gateway.media_root / "telegram").rglob("*.wav")] if TELEGRAM else []
        return len(media_files(gunicorn_gateway.media_root)), len(telegram)

    deadline = time.monotonic() + 120
    while stored() != (2 * MEDIA, TELEGRAM) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored() == (2 * MEDIA, TELEGRAM)

    # The multiprocess metrics, scraped from whichever worker answers, count every worker's requests.
    with urllib.request.urlopen(f"{gunicorn_gateway.url}/metrics", timeout=5) as answer:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(answer.read().decode()) for s in f.samples}
    assert samples[("mediabot_gateway_webhooks_total", (("result", "text_only"),))] == TEXT
    assert samples[("mediabot_gateway_webhooks_total", (("result", "media"),))] == MEDIA + TELEGRAM
    # Items are counted where they are processed: by the gateway on the spool, by the workers on JetStream
    # (their own /metrics), so there the gateway counts none.
    saved = samples.get(("mediabot_gateway_media_outcomes_total", (("media_type", "audio"), ("outcome", "saved"))), 0)
    assert saved == (MEDIA + TELEGRAM if gunicorn_gateway.intake == "spool" else 0)

    def figures(kind: str, latencies: list[float]) -> dict[str, float]:
        return {f"{kind}_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
                f"{kind}_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                f"{kind}_max_ms": round(max(latencies) * 1000, 1)}

    report: dict[str, object] = {
        "intake": gunicorn_gateway.intake, "deferred": deferred,
        **({"jetstream_workers": JETSTREAM_WORKERS,
            "worker_concurrency": int(os.environ.get("WORKER_CONCURRENCY") or Settings.worker_concurrency)}
           if gunicorn_gateway.intake == "jetstream" else {}),
        "text_webhooks": TEXT, "media_webhooks": MEDIA, "telegram_updates": TELEGRAM, "concurrency": CONCURRENCY,
        "media_delay_s": MEDIA_DELAY_S,
        "wall_s": round(wall_s, 1), "requests_per_s": round(len(results) / wall_s, 1), "errors_5xx": 0,
        **figures("text", [e for m, _, e, _ in results if m == "0"]),
        **(figures("media", [e for m, _, e, _ in results if m not in ("0", "tg")]) if MEDIA else {}),
        **(figures("telegram", [e for m, _, e, _ in results if m == "tg"]) if TELEGRAM else {}),
        **figures("all", [e for _, _, e, _ in results]),
    }
    if os.environ.get("MEDIABOT_LOAD_REPORT"):  # one object per intake, so both runs' figures sit side by side
        path = Path(os.environ["MEDIABOT_LOAD_REPORT"])
        both = json.loads(path.read_text()) if path.exists() else {}
        both = both if isinstance(both, dict) and "intake" not in both else {}
        both[gunicorn_gateway.intake] = report
        path.write_text(json.dumps(both, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nload ({gunicorn_gateway.intake}):", json.dumps(report))
