"""A whole voice-note or photo webhook as Twilio would deliver it: download, convert or detect, store, reply.

Drives the gateway (under gunicorn, as in production) with the simulator against a running audio
or vision service, and returns the per-webhook times the simulator measured (the POST, not its own set-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from gateway.whatsapp.simulate import send
from bench.support import free_port

WEBHOOK_P50_TARGET_MS = 250


def time_webhooks(audio_port: int, voice: Path, runs: int, work: Path) -> list[float]:
    """Seconds per webhook for ``runs`` voice notes, after two warm-up deliveries."""
    return _time(
        {"AUDIO_SERVICE_ADDR": f"127.0.0.1:{audio_port}"}, [voice], runs, work, "Saved your voice message"
    )


def time_photo_webhooks(vision_address: str, photos: list[Path], runs: int, work: Path) -> list[float]:
    """Seconds per webhook for ``runs`` photo messages (cycling through ``photos``, each with a face)."""
    return _time({"VISION_SERVICE_ADDR": vision_address}, photos, runs, work, "Saved your photo")


def _time(service_env: dict[str, str], media: list[Path], runs: int, work: Path, expect: str) -> list[float]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PUBLIC_BASE_URL"))},
        "GATEWAY_PORT": str(port),
        **service_env,
        "MEDIA_ROOT": str(work / "media"),
        "SPOOL_DIR": str(work / "spool"),
        "LOG_LEVEL": "WARNING",
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(work / "gateway.log", "wb") as log:
        gateway = subprocess.Popen(
            [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "8", "gateway:create_app()"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{(work / 'gateway.log').read_text()[-2000:]}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/whatsapp"
        times = []
        for i in range(runs + 2):
            result = send([media[i % len(media)]], from_number="+15550009999", url=url)
            if result.status != 200 or not result.reply_text.startswith(expect):
                raise RuntimeError(f"unexpected reply: {result.status} {result.reply_text!r}")
            if i >= 2:
                times.append(result.elapsed_s)
        return times
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
