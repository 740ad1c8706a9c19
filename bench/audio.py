"""Audio service vs. the ffmpeg CLI on the same files, side by side, plus the service's memory after 200 calls.

Run with ``make bench-audio`` (``python -m bench.audio``). The service runs as its own process, exactly as
deployed (``python -m audio_service`` on a loopback port), so its resident memory can be read from /proc.
Targets (issue 2): median service time <= 1.15 x the CLI's for the same file; VmRSS <= 120 MB after 200
conversions. Calls alternate service / CLI so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from mediabot.limits import client_channel_options
from bench.webhook import WEBHOOK_P50_TARGET_MS, time_webhooks
from mediabot.v1 import audio_pb2, audio_pb2_grpc

RATIO_TARGET = 1.15
RSS_TARGET_MB = 120
TOTAL_CONVERSIONS = 200
SPEECH = (
    "Hi, it's me. I'm running a little late, the train is stuck outside the station. "
    "Can you tell the others to start without me? I'll be there in twenty minutes."
)


def run(args: list[str]) -> None:
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def make_inputs(directory: Path) -> dict[str, Path]:
    """A 10 s WhatsApp-style voice note (Ogg Opus, 16 kHz mono, VoIP mode) and a 3-minute MP3."""
    speech = directory / "speech.wav"
    run(["espeak-ng", "-w", str(speech), SPEECH])
    voice = directory / "voice_10s.ogg"
    run(["ffmpeg", "-nostdin", "-y", "-i", str(speech), "-af", "apad", "-t", "10", "-ar", "16000", "-ac", "1",
         "-c:a", "libopus", "-b:a", "24k", "-application", "voip", str(voice)])
    song = directory / "speech_3min.mp3"
    run(["ffmpeg", "-nostdin", "-y", "-stream_loop", "-1", "-i", str(speech), "-t", "180", "-ar", "44100",
         "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k", str(song)])
    return {"voice note 10 s (ogg/opus)": voice, "mp3 3 min (44.1k stereo)": song}


def start_service(log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "AUDIO_LISTEN": "127.0.0.1:0"}
    log = open(log_path, "wb")  # a file, not a pipe: 200 log lines must never block the service
    proc = subprocess.Popen([sys.executable, "-m", "audio_service"], env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("msg") == "audio service listening":
                return proc, int(entry["port"])
        if proc.poll() is not None:
            raise SystemExit(f"audio service exited early:\n{log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("audio service did not start within 30 s")


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the process in MB: now, and the peak so far."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def process_cpu_s(pid: int) -> float:
    """CPU seconds of the process and its finished children (the service's ffmpeg runs): unlike wall time,
    this does not depend on what else the machine is doing."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_service(stub: audio_pb2_grpc.AudioServiceStub, data: bytes) -> float:
    started = time.perf_counter()
    reply = stub.ConvertToWav(audio_pb2.ConvertToWavRequest(audio=data, content_type="audio/ogg"), timeout=60)
    elapsed = time.perf_counter() - started
    assert reply.wav[:4] == b"RIFF" and reply.sample_rate_hz == 16000
    return elapsed


def time_cli(path: Path, out: Path) -> float:
    started = time.perf_counter()
    run(["ffmpeg", "-nostdin", "-y", "-i", str(path), "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", str(out)])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs-voice", type=int, default=40, help="timed runs per side for the voice note")
    parser.add_argument("--runs-mp3", type=int, default=10, help="timed runs per side for the 3-minute MP3")
    parser.add_argument("--runs-webhook", type=int, default=30, help="timed whole webhooks (simulator -> gateway)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        directory = Path(tmp)
        inputs = make_inputs(directory)
        proc, port = start_service(directory / "service.log")
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=client_channel_options())
            stub = audio_pb2_grpc.AudioServiceStub(channel)
            idle_rss, _ = rss_mb(proc.pid)
            calls = 0
            rows = []
            for (name, path), runs in zip(inputs.items(), (args.runs_voice, args.runs_mp3)):
                data = path.read_bytes()
                for _ in range(2):  # warm-up: page cache, first-call setup on both sides
                    time_service(stub, data)
                    time_cli(path, directory / "cli.wav")
                    calls += 1
                service_s, cli_s = [], []
                service_cpu = cli_cpu = 0.0
                for _ in range(runs):
                    before = process_cpu_s(proc.pid)
                    service_s.append(time_service(stub, data))
                    service_cpu += process_cpu_s(proc.pid) - before
                    before = children_cpu_s()
                    cli_s.append(time_cli(path, directory / "cli.wav"))
                    cli_cpu += children_cpu_s() - before
                    calls += 1
                rows.append((name, len(data), statistics.median(service_s), statistics.median(cli_s),
                             service_cpu / runs, cli_cpu / runs))

            webhook_s = time_webhooks(port, inputs["voice note 10 s (ogg/opus)"], args.runs_webhook, directory)
            calls += args.runs_webhook + 2

            voice = inputs["voice note 10 s (ogg/opus)"].read_bytes()
            song = inputs["mp3 3 min (44.1k stereo)"].read_bytes()
            while calls < TOTAL_CONVERSIONS:
                time_service(stub, song if calls % 10 == 0 else voice)
                calls += 1
            rss, peak = rss_mb(proc.pid)
            channel.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"audio service vs ffmpeg CLI ({os.cpu_count()} CPUs; medians; service = gRPC round trip on loopback)")
    print(f"{'input':<28} {'bytes':>9} {'service ms':>11} {'CLI ms':>8} {'ratio':>6}  {'(target <= ' + str(RATIO_TARGET) + ')':<19}"
          f"{'CPU ms service / CLI':>21} {'ratio':>6}")
    ok = True
    for name, size, service, cli, service_cpu, cli_cpu in rows:
        ratio = service / cli
        ok &= ratio <= RATIO_TARGET
        print(f"{name:<28} {size:>9} {service * 1000:>11.1f} {cli * 1000:>8.1f} {ratio:>6.2f}  "
              f"{'ok' if ratio <= RATIO_TARGET else 'MISSED':<19}"
              f"{service_cpu * 1000:>12.0f} / {cli_cpu * 1000:<6.0f} {service_cpu / cli_cpu:>6.2f}")
    print("(CPU: the service process incl. its ffmpeg vs the CLI ffmpeg, mean per call; unaffected by machine load)")
    webhook_p50 = statistics.median(webhook_s) * 1000
    ok &= webhook_p50 <= WEBHOOK_P50_TARGET_MS
    print(f"whole webhook, 10 s voice note (simulator -> gunicorn gateway -> audio service -> disk -> TwiML): "
          f"p50 {webhook_p50:.0f} ms, p90 {statistics.quantiles(webhook_s, n=10)[-1] * 1000:.0f} ms over {len(webhook_s)}"
          f"  target p50 <= {WEBHOOK_P50_TARGET_MS} ms: {'ok' if webhook_p50 <= WEBHOOK_P50_TARGET_MS else 'MISSED'}")
    ok &= rss <= RSS_TARGET_MB
    print(f"service memory: VmRSS {rss:.1f} MB after {calls} conversions (idle {idle_rss:.1f} MB, peak {peak:.1f} MB)"
          f"  target <= {RSS_TARGET_MB} MB: {'ok' if rss <= RSS_TARGET_MB else 'MISSED'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
