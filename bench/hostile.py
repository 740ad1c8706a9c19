"""The hostile corpus through the running stack, with every process's peak memory, against the code as it was.

Run with ``make bench-hostile`` (``python -m bench.hostile``). One Triton serves model_repository/; then,
twice, the stack as `make run` starts it — the audio service, the vision service, the gateway under gunicorn
(2 workers x 8 threads) and its spool worker, each a real process on a loopback port, storing to a temp
MEDIA_ROOT — once from this checkout and once from ``--baseline-ref`` (the commit before the memory work
of issue 9, exported with ``git archive``), and the simulator (gateway.whatsapp.simulate) sends both the same:
- every file of bench/hostile_media.CORPUS as its own message, 8 messages at a time;
- one message with ten 16 MiB items;
- six voice notes of 14 minutes at once (legitimate, stored: the gateway's largest answers, 27 MB WAVs).
Peak RSS is read from /proc: VmHWM of each process at the end, and, for the audio service, the largest sum
over the service and its ffmpeg children seen by a 20 ms sampler. Then the table: figures, targets
(issue 9: vision <= 400 MB, audio <= 300 MB, each gateway process <= 400 MB) and the baseline's figures,
and whether every hostile file got its reply and nothing of them was stored.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.hostile_media import CORPUS, big_message_items
from face_model.triton_local import start_triton, stop_triton, wait_ready
from gateway import replies
from gateway.whatsapp.simulate import send, serve_media
from bench.support import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The last commit before issue 9's memory work: the baseline runs this code.
BASELINE_REF = "8fb63be"
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-hostile-auth-token"
TARGETS_MB = {"vision": 400, "audio": 300, "gateway": 400}
VOICE_NOTES = 6
VOICE_NOTE_S = 14 * 60
MB = 1024 * 1024
_SAVED_VOICE = re.compile(r"Saved your voice message \(\d+ min \d\d s\)\.")


# --- processes and their memory ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


def start(name: str, command: list[str], env: dict[str, str], cwd: Path, work: Path) -> Proc:
    log = work / f"{name}.log"
    with open(log, "ab") as out:  # a file, not a pipe: log lines must never block a service
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return Proc(name, process, log)


def stop(proc: Proc) -> None:
    """SIGTERM to the process group (gunicorn's workers, ffmpeg), SIGKILL after 20 s."""
    if proc.process.poll() is None:
        os.killpg(proc.process.pid, signal.SIGTERM)
        try:
            proc.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait()


def wait_for(what: str, ready: Callable[[], bool], procs: list[Proc], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.log.read_text(errors='replace')[-3000:]}")
        try:
            if ready():
                return
        except (OSError, grpc.RpcError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s} s")


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
    return status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback URL built here
            return response.status == 200
    except urllib.error.URLError:
        return False


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (ffmpeg's libraries, mapped by every ffmpeg at once) counted once
    across the processes sharing them, as the container's memory cgroup charges them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Child processes of every thread of ``pid`` (ffmpeg is started by the gRPC worker threads)."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


class PeakSampler:
    """Peak memory per named process: its own VmHWM (exact), and with ``with_children`` also the largest sum
    over it and its descendants seen every 20 ms, in PSS (a sum of RSS would count the libraries every
    concurrent ffmpeg maps once per process); each child's own VmHWM is read at every sample too."""

    def __init__(self) -> None:
        self.roots: dict[str, tuple[int, bool]] = {}
        self.tree_peak_kb: dict[str, int] = {}
        self.child_peak_kb: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int, *, with_children: bool = False) -> None:
        self.roots[name] = (pid, with_children)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for name, (pid, with_children) in self.roots.items():
                if not with_children:
                    continue
                total = _pss_kb(pid)
                pending = _children(pid)
                while pending:
                    child = pending.pop()
                    total += _pss_kb(child)
                    self.child_peak_kb[name] = max(self.child_peak_kb.get(name, 0), _status_kb(child, "VmHWM"))
                    pending.extend(_children(child))
                self.tree_peak_kb[name] = max(self.tree_peak_kb.get(name, 0), total)

    def finish(self) -> dict[str, dict[str, float]]:
        """Per name: peak MB (its own VmHWM, or the tree's PSS peak when larger), its own VmHWM, its largest child's."""
        self._stop.set()
        self._thread.join()
        figures = {}
        for name, (pid, _) in self.roots.items():
            own = _status_kb(pid, "VmHWM")
            figures[name] = {
                "peak_mb": max(own, self.tree_peak_kb.get(name, 0)) / 1024,
                "own_hwm_mb": own / 1024,
                "largest_child_mb": self.child_peak_kb.get(name, 0) / 1024,
            }
        return figures


# --- one stack, the whole corpus ----------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    # name -> (expected reply, reply received, ok)
    replies: dict[str, tuple[str, str, bool]] = field(default_factory=dict)
    hostile_stored: list[str] = field(default_factory=list)
    voice_notes_stored: int = 0
    spool_left: int = 0
    seconds: float = 0.0


@contextmanager
def stack(code: Path, work: Path, triton_grpc: str) -> Iterator[tuple[str, PeakSampler, list[Proc]]]:
    """The four processes of `make run` (Triton aside) from ``code``; yields the webhook URL and the sampler."""
    work.mkdir(parents=True, exist_ok=True)
    audio_addr, vision_addr, port = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", free_port()
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("TWILIO_", "PUBLIC_BASE_URL", "MEDIA_", "SPOOL_", "STORAGE", "MINIO_"))}
    base["PYTHONPATH"] = str(code)
    env = {
        **base,
        "AUDIO_LISTEN": audio_addr, "VISION_LISTEN": vision_addr, "TRITON_URL": triton_grpc,
        "AUDIO_SERVICE_ADDR": audio_addr, "VISION_SERVICE_ADDR": vision_addr,
        "GATEWAY_PORT": str(port), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "TRUST_PROXY": "0",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "MEDIA_HOST_ALLOWLIST": "127.0.0.1",
        "STORAGE": "filesystem", "MEDIA_ROOT": str(work / "media"), "SPOOL_DIR": str(work / "spool"),
        # Retries soon, and give up after a minute: the baseline may never finish some files.
        "SPOOL_RETRY_BASE_S": "0.5", "SPOOL_RETRY_MAX_S": "4", "SPOOL_POLL_S": "0.2", "SPOOL_GIVE_UP_AFTER_S": "60",
        "LOG_LEVEL": "INFO",
    }
    procs = [
        start("audio", [sys.executable, "-m", "audio_service"], env, code, work),
        start("vision", [sys.executable, "-m", "vision_service"], env, code, work),
    ]
    try:
        wait_for("audio", lambda: grpc_serving(audio_addr), procs)
        wait_for("vision", lambda: grpc_serving(vision_addr), procs)
        procs.append(start("gateway", [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
                                       "--threads", "8", "--timeout", "60", "--graceful-timeout", "15",
                                       "gateway:create_app()"], env, code, work))
        # The worker's module moved with the intake package; the baseline checkout still has it at the top.
        worker = "gateway.intake.worker" if (code / "gateway" / "intake" / "worker.py").is_file() else "gateway.worker"
        procs.append(start("worker", [sys.executable, "-m", worker], env, code, work))
        wait_for("gateway", lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), procs)
        sampler = PeakSampler()
        sampler.watch("vision", procs[1].process.pid)
        sampler.watch("audio", procs[0].process.pid, with_children=True)
        wait_for("gunicorn workers", lambda: len(_children(procs[2].process.pid)) == 2, procs)
        for index, pid in enumerate(sorted(_children(procs[2].process.pid)), start=1):
            sampler.watch(f"gateway worker {index}", pid)
        sampler.watch("gateway spool worker", procs[3].process.pid)
        sampler.start()
        yield f"http://127.0.0.1:{port}/whatsapp", sampler, procs
    finally:
        for proc in reversed(procs):
            stop(proc)


def make_inputs(directory: Path) -> tuple[list[tuple[str, Path, str, str]], list[tuple[Path, str, str]], list[Path]]:
    """(corpus files as (name, path, content type, reply), the big message's items, the voice notes)."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = []
    for item in CORPUS:
        path = directory / item.name
        path.write_bytes(item.make(directory))
        corpus.append((item.name, path, item.content_type, item.reply))
    big = []
    for index, (content_type, body, reply) in enumerate(big_message_items()):
        path = directory / f"big-{index}"
        path.write_bytes(body)
        big.append((path, content_type, reply))
    voice = directory / "voice_14min.ogg"
    if not voice.exists():
        subprocess.run(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", f"sine=frequency=300:sample_rate=16000:duration={VOICE_NOTE_S}", "-c:a", "libopus", "-b:a", "16k",
             "-application", "voip", "-f", "ogg", str(voice)],
            check=True, stdin=subprocess.DEVNULL, capture_output=True,
        )
    return corpus, big, [voice] * VOICE_NOTES


def run_corpus(label: str, code: Path, work: Path, triton_grpc: str, inputs) -> Run:  # noqa: ANN001
    corpus, big, voices = inputs
    result = Run(label)
    started = time.monotonic()
    with stack(code, work, triton_grpc) as (url, sampler, _procs), serve_media(ACCOUNT_SID, AUTH_TOKEN) as host:

        def deliver(paths: list[Path], types: list[str]) -> tuple[str, str]:
            sent = send(paths, url=url, content_types=types, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN,
                        media_host=host, timeout_s=60)
            return sent.message_sid, sent.reply_text if sent.status == 200 else f"HTTP {sent.status}"

        jobs: dict[str, tuple[Callable[[], tuple[str, str]], str]] = {}
        for name, path, content_type, reply in corpus:
            jobs[name] = (lambda p=path, t=content_type: deliver([p], [t]), reply)
        jobs["message-10-items-of-16-MiB"] = (
            lambda: deliver([p for p, _, _ in big], [t for _, t, _ in big]),
            replies.combine([r for _, _, r in big]),
        )
        for index, voice in enumerate(voices):
            jobs[f"voice-note-14-min-{index + 1}"] = (lambda v=voice: deliver([v], ["audio/ogg"]), "saved")
        with ThreadPoolExecutor(8) as pool:
            futures = {name: pool.submit(job) for name, (job, _) in jobs.items()}
            answers = {name: future.result() for name, future in futures.items()}
        # What was spooled (a busy moment, a slow conversion) is finished by the spool worker: wait for it.
        deadline = time.monotonic() + 90
        while _spooled(work) and time.monotonic() < deadline:
            time.sleep(0.5)
        result.spool_left = len(_spooled(work))
        result.memory = sampler.finish()
    result.seconds = time.monotonic() - started
    stored = [p.name for p in (work / "media").rglob("*") if p.is_file() and not p.name.startswith(".")]
    for name, (message_sid, text) in answers.items():
        expected = jobs[name][1]
        if name.startswith("voice-note"):
            ok = bool(_SAVED_VOICE.fullmatch(text)) or text == replies.RECEIVED_VOICE
            result.voice_notes_stored += sum(1 for s in stored if message_sid in s and s.endswith(".wav"))
        else:
            # Each sentence is the file's answer, or "received, will be done shortly" when it was spooled
            # (no room in the moment): the spool worker then gave the final answer, checked as nothing stored.
            ok = _each_sentence_ok(text, expected, name, corpus, big)
            result.hostile_stored += [s for s in stored if message_sid in s]
        result.replies[name] = (expected, text, ok)
    return result


def _each_sentence_ok(text: str, expected: str, name: str, corpus, big) -> bool:  # noqa: ANN001
    types = [content_type for _, content_type, _ in big] if len(big) > 1 and "\n" in expected else [
        next(t for n, _, t, _ in corpus if n == name)]
    got, wanted = text.splitlines(), expected.splitlines()
    if len(got) != len(wanted):
        return False
    prefix = re.compile(r"^\d+\. ")
    return all(g == w or prefix.sub("", g) == replies.received(t) and prefix.sub("", w) != ""
               for g, w, t in zip(got, wanted, types, strict=True))


def _spooled(work: Path) -> list[Path]:
    spool = work / "spool"
    return [p for p in spool.glob("*.spool") if not p.name.startswith(".")] if spool.exists() else []


# --- the table --------------------------------------------------------------------------------------------


def _target(name: str) -> int:
    return TARGETS_MB["gateway" if name.startswith("gateway") else name]


def report(current: Run, baseline: Run | None) -> dict[str, object]:
    lines = ["", f"Peak RSS, MB (whole corpus through the stack; {current.seconds:.0f} s"
             + (f", baseline {baseline.seconds:.0f} s)" if baseline else ")")]
    header = f"{'process':<24}{'peak':>8}{'target':>8}{'ok':>5}"
    if baseline:
        header += f"{'baseline':>10}{'ratio':>7}"
    lines.append(header)
    rows = {}
    for name, figures in current.memory.items():
        peak = figures["peak_mb"]
        row = f"{name:<24}{peak:>8.0f}{_target(name):>8}{'yes' if peak <= _target(name) else 'NO':>5}"
        before = baseline.memory.get(name, {}).get("peak_mb") if baseline else None
        if before:
            row += f"{before:>10.0f}{peak / before:>7.2f}"
        if figures["largest_child_mb"]:
            row += (f"   (with its ffmpeg children, PSS; the service alone {figures['own_hwm_mb']:.0f} MB, "
                    f"largest ffmpeg {figures['largest_child_mb']:.0f} MB")
            if baseline and baseline.memory.get(name, {}).get("largest_child_mb"):
                row += (f"; baseline {baseline.memory[name]['own_hwm_mb']:.0f} and "
                        f"{baseline.memory[name]['largest_child_mb']:.0f} MB")
            row += ")"
        lines.append(row)
        rows[name] = {"peak_mb": round(peak, 1), "target_mb": _target(name),
                      "baseline_mb": round(before, 1) if before else None}
    lines.append("")
    lines.append("Replies:")
    for name, (expected, text, ok) in current.replies.items():
        before = baseline.replies.get(name, ("", "", False))[1] if baseline else None
        lines.append(f"  {'ok ' if ok else 'BAD'} {name}: {text.splitlines()[0] if text else '(none)'}"
                     + (f" ...({len(text.splitlines())} lines)" if len(text.splitlines()) > 1 else "")
                     + (f"   [baseline: {before.splitlines()[0] if before else '(none)'}]" if baseline else ""))
    clear = all(ok for _, _, ok in current.replies.values())
    lines.append("")
    lines.append(f"every file a clear reply: {'yes' if clear else 'NO'}; hostile files stored: "
                 f"{len(current.hostile_stored)}; voice notes stored: {current.voice_notes_stored} of {VOICE_NOTES} "
                 f"(2 files each); spool entries left: {current.spool_left}")
    within = all(r["peak_mb"] <= r["target_mb"] for r in rows.values())
    lines.append(f"memory targets met: {'yes' if within else 'NO'}")
    print("\n".join(lines))
    return {"rows": rows, "clear_replies": clear,
            "replies": {name: {"expected": e, "got": t, "ok": ok} for name, (e, t, ok) in current.replies.items()}, "hostile_stored": current.hostile_stored,
            "voice_notes_stored": current.voice_notes_stored, "targets_met": within,
            "baseline_ref": BASELINE_REF if baseline else None}


def export_baseline(ref: str, directory: Path) -> Path | None:
    """The code at ``ref`` (git archive), or None when this is not a git checkout that has it."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"no baseline: cannot export {ref} ({error})", file=sys.stderr)
        return None
    directory.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-ref", default=BASELINE_REF,
                        help=f"commit whose code is the baseline (default {BASELINE_REF}; 'none' to skip)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "hostile.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    triton_log = work / "triton.log"
    triton = start_triton(REPO / "model_repository", http_port=http, grpc_port=grpc_port, metrics_port=metrics,
                          log_path=triton_log, work_dir=REPO / ".triton")
    try:
        wait_ready(f"127.0.0.1:{http}", 300, process=triton, log_path=triton_log, models=["face_detector"])
        inputs = make_inputs(work / "inputs")
        print(f"corpus: {len(inputs[0])} hostile files, one message of 10 x 16 MiB, {VOICE_NOTES} voice notes "
              f"of {VOICE_NOTE_S // 60} min; work dir {work}", flush=True)
        current = run_corpus("now", REPO, work / "now", f"127.0.0.1:{grpc_port}", inputs)
        baseline = None
        if args.baseline_ref != "none":
            code = export_baseline(args.baseline_ref, work / "baseline-code")
            if code is not None:
                # The baseline's own model repository is the same files; its processes run its own code.
                baseline = run_corpus("baseline", code, work / "baseline", f"127.0.0.1:{grpc_port}", inputs)
        summary = report(current, baseline)
    finally:
        stop_triton(triton)
        if not os.environ.get("BENCH_KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    ok = summary["targets_met"] and summary["clear_replies"] and not summary["hostile_stored"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
