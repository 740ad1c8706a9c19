"""The README's quick start, run exactly as written in a fresh copy of the checkout, as a newcomer would.

`make run` once failed on every fresh clone (python-dotenv refused `-f /dev/null` when there was no `.env`)
while every other test passed, because none ran the README's command itself. This one does: it copies the
working tree (tracked and new files, nothing git ignores: no `.env`, no `data/`, no built model) into a temp
dir, links the already-built venv in as `.venv` (the only shortcut; the recipe is the one in the Makefile),
runs `make run`, uses the simulator the way the README shows, presses Ctrl-C and checks that every process
of the stack is gone and the files are where the README says.

The gateway and Triton listen on the README's default ports (8080, 8000-8002), so nothing else may hold them.
The audio and vision services are moved to free ports through their documented settings (AUDIO_LISTEN and
AUDIO_SERVICE_ADDR, VISION_LISTEN and VISION_SERVICE_ADDR): their defaults, 50051 and 50052, lie in Linux's
ephemeral port range, where a server this same test session started on port 0 may already sit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bench.photo_set import face_photo, no_face_photo
from bench.support import free_port
from gateway.stack_ready import not_serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
READY_URL = "http://127.0.0.1:8080/readyz"
# What `make run` listens on by default: gateway, audio, vision, Triton HTTP/gRPC/metrics.
DEFAULT_PORTS = (8080, 8000, 8001, 8002)
# Building the model and loading it into Triton on a busy 2-core machine.
READY_TIMEOUT_S = 300


def _quick_start_commands() -> list[str]:
    """The commands of the README's Quick start block, in order (`make run`, `make test`)."""
    block = re.search(r"## Quick start\s+```sh\n(.*?)```", README, re.S)
    assert block, "README.md has no Quick start code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def _simulator_command() -> list[str]:
    """The simulator line the README shows right after the quick start."""
    match = re.search(r"^(\.venv/bin/python -m gateway\.whatsapp\.simulate [^\n]*)$", README, re.M)
    assert match, "README.md no longer shows how to run the simulator"
    return match.group(1).split()


def _project_variables() -> set[str]:
    """Every setting .env.example names; a newcomer's shell sets none of them."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))


def _copy_checkout(dest: Path) -> None:
    """The working tree as a fresh clone of it would be: tracked and new files, nothing git ignores."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree but not yet in the index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (dest / ".venv").symlink_to(ROOT / ".venv")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; the parent pid is the second field after it.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Run:
    """`make run` in a fresh copy of the checkout, and every process it started."""

    checkout: Path
    make: subprocess.Popen[bytes]
    log: Path
    seen: set[int]

    def wait_ready(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.seen |= _descendants(self.make.pid)
            if self.make.poll() is not None:
                raise AssertionError(f"`make run` exited with {self.make.returncode}:\n{self.tail()}")
            # /readyz is 200 once the gateway can keep a message; `make run` is up once every backend serves too.
            if not_serving(session, READY_URL) == []:
                self.seen |= _descendants(self.make.pid)
                return
            time.sleep(1)
        raise AssertionError(f"`make run` was not ready after {READY_TIMEOUT_S} s:\n{self.tail()}")

    def ctrl_c(self) -> None:
        """What Ctrl-C in the terminal does: SIGINT to the foreground process group."""
        self.seen |= _descendants(self.make.pid)
        os.killpg(self.make.pid, signal.SIGINT)
        try:
            self.make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`make run` did not stop on Ctrl-C:\n{self.tail()}") from None

    def kill(self) -> None:
        for pid in self.seen | {self.make.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.make.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[[str | None], Run]]:
    """Starts `make run` (the README's first command) in a fresh copy of the checkout; stops it afterwards."""
    busy = [port for port in DEFAULT_PORTS if not _port_is_free(port)]
    assert not busy, f"ports {busy} are taken; stop the local `make run` (or whatever holds them) first"
    runs: list[Run] = []

    def start(dotenv: str | None) -> Run:
        checkout = tmp_path / "mediabot"
        _copy_checkout(checkout)
        if dotenv is not None:
            (checkout / ".env").write_text(dotenv, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in _project_variables()}
        env.pop("PYTHONPATH", None)
        env.pop("MAKEFLAGS", None)
        audio, vision = free_port(), free_port()
        env |= {"AUDIO_LISTEN": f"127.0.0.1:{audio}", "AUDIO_SERVICE_ADDR": f"127.0.0.1:{audio}",
                "VISION_LISTEN": f"127.0.0.1:{vision}", "VISION_SERVICE_ADDR": f"127.0.0.1:{vision}"}
        log = tmp_path / "make-run.log"
        command = _quick_start_commands()[0].split()
        with log.open("wb") as out:
            make = subprocess.Popen(
                command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        run = Run(checkout=checkout, make=make, log=log, seen=set())
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.make.poll() is None:
            run.kill()


def test_the_quick_start_is_make_run_then_make_test() -> None:
    assert _quick_start_commands() == ["make run", "make test"]


def test_make_run_from_a_fresh_clone_keeps_a_voice_note_and_a_face_photo(
    make_run: Callable[[str | None], Run], tmp_path: Path
) -> None:
    run = make_run(None)
    assert not (run.checkout / ".env").exists() and not (run.checkout / "data").exists()
    run.wait_ready()

    # `make samples` (for those with no voice note or photo at hand), then the README's simulator line as
    # written, plus a photo without a face.
    made = subprocess.run(["make", "samples"], cwd=run.checkout, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "MAKEFLAGS"})
    assert made.returncode == 0, made.stdout + made.stderr
    (tmp_path / "cat.jpg").write_bytes(no_face_photo())
    command = _simulator_command()
    sender = command[command.index("--from") + 1]
    examples = [part for part in command if re.fullmatch(r"\w+\.(ogg|jpg)", part)]
    assert examples == ["voice.ogg", "photo.jpg"], command
    assert all((run.checkout / name).is_file() for name in examples), made.stdout
    args = command + [str(tmp_path / "cat.jpg")]
    done = subprocess.run(args, cwd=run.checkout, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("1. Saved your voice message"), done.stdout
    assert lines[1].startswith("2. Saved your photo"), done.stdout
    assert lines[2].startswith("3. No face found"), done.stdout

    run.ctrl_c()
    left = sorted(pid for pid in run.seen if _alive(pid))
    assert not left, f"processes of the stack still running after Ctrl-C: {left}\n{run.tail()}"
    assert all(_port_is_free(port) for port in DEFAULT_PORTS), "a port of the stack is still held after Ctrl-C"

    # "The media lands in data/media/whatsapp/<number>/{audio,images}/" (README).
    where = re.search(r"The media lands in `([^`]+)`", README)
    assert where and where.group(1) == f"data/media/whatsapp/{sender.lstrip('+')}/{{audio,images}}/"
    folder = run.checkout / "data" / "media" / "whatsapp" / sender.lstrip("+")
    [wav] = [p for p in (folder / "audio").iterdir() if p.suffix == ".wav"]
    with wave.open(str(wav)) as audio:
        assert (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) == (16000, 1, 2)
    [photo] = [p for p in (folder / "images").iterdir() if p.suffix == ".jpg"]
    assert photo.read_bytes() == face_photo()


@pytest.mark.parametrize("dotenv", ["empty", "example"])
def test_make_run_starts_and_stops_with_an_env_file(make_run: Callable[[str | None], Run], dotenv: str) -> None:
    text = "" if dotenv == "empty" else (ROOT / ".env.example").read_text(encoding="utf-8")
    run = make_run(text)
    run.wait_ready()
    run.ctrl_c()
    left = sorted(pid for pid in run.seen if _alive(pid))
    assert not left, f"processes of the stack still running after Ctrl-C: {left}\n{run.tail()}"
