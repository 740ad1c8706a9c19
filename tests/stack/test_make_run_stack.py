"""The stack `make run` starts (the Procfile under honcho), driven by the simulator as a person would.

Nothing here is started in-process: Triton, the audio service, the vision service and the gateway under
gunicorn run as the real processes of the Procfile, only moved to free loopback ports and a temp MEDIA_ROOT
through the same environment variables a user would set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bench.photo_set import face_photo, no_face_photo
from bench.support import free_port
from gateway.stack_ready import not_serving
from gateway.whatsapp.simulate import send
from tests.fixtures.audio import make_sample

ROOT = Path(__file__).resolve().parents[2]
SENDER = "15551234567"


@dataclass(frozen=True)
class Stack:
    url: str
    media_root: Path
    log: Path
    env: dict[str, str]


def _wait_ready(url: str, honcho: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    session = requests.Session()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if honcho.poll() is not None:
            raise AssertionError(f"the stack exited early:\n{log.read_text()[-4000:]}")
        # /readyz is 200 as soon as the gateway can keep a message; the stack is up when every backend
        # its body lists is serving too.
        if not_serving(session, url) == []:
            return
        time.sleep(0.5)
    raise AssertionError(f"the stack was not ready after {timeout_s} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    triton_http, triton_grpc, triton_metrics = free_port(), free_port(), free_port()
    audio, vision, gateway = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PUBLIC_BASE_URL", "TELEGRAM_"))},
        # The one Telegram variable set: the development Bot API's port (8081 by default) moved to a free one,
        # like every other port here; token and secret are the development ones, as with no configuration.
        "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "TRITON_HTTP_PORT": str(triton_http),
        "TRITON_GRPC_PORT": str(triton_grpc),
        "TRITON_METRICS_PORT": str(triton_metrics),
        "TRITON_URL": f"127.0.0.1:{triton_grpc}",
        "AUDIO_LISTEN": f"127.0.0.1:{audio}",
        "AUDIO_SERVICE_ADDR": f"127.0.0.1:{audio}",
        "VISION_LISTEN": f"127.0.0.1:{vision}",
        "VISION_SERVICE_ADDR": f"127.0.0.1:{vision}",
        "GATEWAY_PORT": str(gateway),
        "MEDIA_ROOT": str(work / "media"),
        "SPOOL_DIR": str(work / "spool"),  # not the checkout's ./data/spool, which a later `make run` resumes
    }
    log = work / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [str(ROOT / ".venv/bin/honcho"), "start", "-f", "Procfile", "-e", os.devnull],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{gateway}/readyz", honcho, log, timeout_s=180)
        yield Stack(url=f"http://127.0.0.1:{gateway}/whatsapp", media_root=work / "media", log=log, env=env)
    finally:
        # Ctrl-C, as a user stops `make run`: honcho forwards it and every process must exit.
        os.killpg(honcho.pid, signal.SIGINT)
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
            raise AssertionError(f"the stack did not stop on Ctrl-C:\n{log.read_text()[-4000:]}")


def _stored(stack: Stack, kind: str) -> list[Path]:
    folder = stack.media_root / "whatsapp" / SENDER / kind
    return sorted(p for p in folder.glob("*") if p.suffix != ".json" and not p.name.startswith(".")) if folder.exists() else []


def test_voice_note_is_saved_as_16k_wav_under_the_sender(stack: Stack, tmp_path: Path) -> None:
    voice = make_sample("ogg_opus", tmp_path)
    result = send([voice], from_number=f"+{SENDER}", url=stack.url)
    assert result.status == 200, result.body
    assert result.reply_text.startswith("Saved your voice message"), result.reply_text
    [wav] = _stored(stack, "audio")
    assert wav.suffix == ".wav" and result.message_sid in wav.name
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(wav)],
        check=True, capture_output=True, text=True,
    ).stdout)["streams"][0]
    assert (probe["codec_name"], probe["sample_rate"], probe["channels"]) == ("pcm_s16le", "16000", 1)


def test_photo_with_a_face_is_kept_and_one_without_is_not(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "face.jpg").write_bytes(face_photo())
    (tmp_path / "cat.jpg").write_bytes(no_face_photo())
    result = send([tmp_path / "face.jpg", tmp_path / "cat.jpg"], from_number=f"+{SENDER}", url=stack.url)
    assert result.status == 200, result.body
    assert "Saved your photo" in result.reply_text and "No face found" in result.reply_text, result.reply_text
    [kept] = _stored(stack, "images")
    assert kept.read_bytes() == face_photo()
    assert kept.name.endswith(f"{result.message_sid}_0.jpg")


def test_the_simulator_cli_prints_the_reply(stack: Stack, tmp_path: Path) -> None:
    voice = make_sample("mp3", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.whatsapp.simulate", "--from", "+15550001111", "--url", stack.url, str(voice)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Saved your voice message"), done.stdout


def test_a_sender_sees_and_erases_their_data_from_the_chat(stack: Stack, tmp_path: Path) -> None:
    """The README's Privacy steps with the simulator: MY DATA, DELETE, DELETE ALL, against the real processes."""
    sender = "+15550002222"
    voice = make_sample("ogg_opus", tmp_path)
    first = send([voice], from_number=sender, url=stack.url)
    assert first.reply_text.startswith("Saved your voice message") and len(first.messages) == 2, first.messages
    assert "Send MY DATA" in first.messages[1]

    def say(body: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.whatsapp.simulate", "--from", sender, "--url", stack.url, "--body", body],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert say("MY DATA").startswith("I keep 1 voice message and 0 photos (")
    assert "send DELETE ALL within 10 minutes" in say("DELETE")
    assert say("delete all").startswith("Done: I erased 1 file I kept for you.")
    folder = stack.media_root / "whatsapp" / sender.lstrip("+")
    assert not [p for p in folder.rglob("*") if p.is_file()]
    assert say("MY DATA").startswith("I keep nothing of yours.")


def test_telegram_with_no_configuration_saves_a_voice_note_and_a_face_photo(stack: Stack, tmp_path: Path) -> None:
    """`make run` + `python -m gateway.telegram.simulate`: the issue's "done when", through the
    Procfile's processes, the development token and secret, and the simulator's local Bot API."""
    voice = make_sample("ogg_opus", tmp_path)
    (tmp_path / "face.jpg").write_bytes(face_photo())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "PUBLIC_BASE_URL"))}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.telegram.simulate", "--from", "4242424",
         "--url", stack.url.replace("/whatsapp", "/telegram"), str(voice), str(tmp_path / "face.jpg")],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
        env={**env, "TELEGRAM_API_BASE_URL": stack.env["TELEGRAM_API_BASE_URL"]},
    )
    assert done.returncode == 0, done.stderr + stack.log.read_text()[-3000:]
    assert done.stdout.startswith("Saved your voice message"), done.stdout
    assert done.stdout.strip().splitlines()[-1] == "Saved your photo (1 face found).", done.stdout
    folder = stack.media_root / "telegram" / "4242424"
    [wav] = sorted((folder / "audio").glob("*.wav"))
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(wav)],
        check=True, capture_output=True, text=True,
    ).stdout)["streams"][0]
    assert (probe["sample_rate"], probe["channels"]) == ("16000", 1)
    [jpg] = sorted((folder / "images").glob("*.jpg"))
    assert jpg.read_bytes() == face_photo()
