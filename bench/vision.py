"""Vision service vs. OpenCV's DNN on the same photos, side by side, plus throughput and the service's memory.

Run with ``make bench-vision`` (``python -m bench.vision``). Triton serves model_repository/ as committed
(its canvas, its dynamic batching); the vision service runs as its own process, exactly as deployed
(``python -m vision_service`` on a loopback port), so its resident memory can be read from /proc.

Measured:
- per image, in this process with the service's own code: decode, preprocess (letterbox), Triton round
  trip, total (p50/p90);
- DetectFaces through the service at concurrency 1 (p50/p90), alternating call by call with OpenCV DNN
  in-process (imdecode + blobFromImage + forward, the sample recipe) so both see the same machine load;
- throughput at concurrency 1, 4 and 16 through the service;
- the service's VmRSS (and peak VmHWM) after all of it.
Targets (issue 3, 2-core CPU): DetectFaces p50 at c1 <= 1.3 x OpenCV DNN's p50; throughput c16 >= 1.5 x c1;
service RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np

from bench.baselines import SAMPLE_MEAN_BGR, load_ssd
from face_model.repository import write_face_detector_variant
from face_model.triton_local import start_triton, stop_triton, wait_ready
from mediabot.v1 import vision_pb2, vision_pb2_grpc
from tests.fixtures.photos import Photo, photo_set
from tests.fixtures.triton import MODEL_REPOSITORY, ensure_face_detector_artifact, free_port
from vision_service.detector import TritonDetector
from vision_service.pipeline import Limits, find_faces

LATENCY_RATIO_TARGET = 1.3
THROUGHPUT_RATIO_TARGET = 1.5
RSS_TARGET_MB = 200
CONCURRENCY = (1, 4, 16)
LIMITS = Limits(max_bytes=16 * 1024 * 1024, max_pixels=50_000_000)


def bench_photos() -> list[Photo]:
    """Real photos as people send them: the packaged portraits, groups and scenes, plus two 6 MP phone-size JPEGs."""
    chosen = [
        "grace_hopper", "astronaut", "luispedro", "zidane", "bus", "friends", "cameraman",
        "chelsea_cat", "coffee", "motorcycle", "rocket", "page",
        "small_luispedro_on_motorcycle_4", "large_rocket",
    ]  # fmt: skip
    by_name = {p.name: p for p in photo_set()}
    return [by_name[name] for name in chosen]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def start_service(triton_grpc: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "VISION_LISTEN": "127.0.0.1:0", "TRITON_URL": triton_grpc, "LOG_LEVEL": "INFO"}
    with open(log_path, "wb") as log:  # a file, not a pipe: log lines must never block the service
        process = subprocess.Popen(
            [sys.executable, "-m", "vision_service"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("msg") == "vision service listening":
                return process, f"127.0.0.1:{entry['port']}"
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"vision service did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


def wait_serving(stub: vision_pb2_grpc.VisionServiceStub, data: bytes, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            stub.DetectFaces(vision_pb2.DetectFacesRequest(image=data), timeout=30)
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB: now, and the peak so far."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class OpenCvDnn:
    """The baseline: OpenCV's face-detector sample, in-process, on the same bytes."""

    def __init__(self) -> None:
        self.net = load_ssd()

    def __call__(self, data: bytes) -> float:
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        blob = cv2.dnn.blobFromImage(cv2.resize(image, (300, 300)), 1.0, (300, 300), SAMPLE_MEAN_BGR)
        self.net.setInput(blob)
        self.net.forward()
        return (time.perf_counter() - started) * 1000


def call_ms(stub: vision_pb2_grpc.VisionServiceStub, data: bytes) -> float:
    started = time.perf_counter()
    stub.DetectFaces(vision_pb2.DetectFacesRequest(image=data, content_type="image/jpeg"), timeout=60)
    return (time.perf_counter() - started) * 1000


def throughput(stub: vision_pb2_grpc.VisionServiceStub, photos: Sequence[Photo], concurrency: int, seconds: float) -> float:
    """Photos per second with ``concurrency`` calls always in flight, for about ``seconds``."""
    payloads = [p.data for p in photos]
    stop_at = time.monotonic() + seconds
    done = [0] * concurrency

    def worker(index: int) -> None:
        i = index
        while time.monotonic() < stop_at:
            stub.DetectFaces(vision_pb2.DetectFacesRequest(image=payloads[i % len(payloads)]), timeout=120)
            done[index] += 1
            i += concurrency

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return sum(done) / (time.monotonic() - started)


def stage_table(photos: Sequence[Photo], detector: TritonDetector, rounds: int) -> tuple[str, dict[str, list[float]]]:
    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "triton": [], "total": []}
    for _ in range(rounds):
        for photo in photos:
            report = find_faces(photo.data, detector=detector, limits=LIMITS, min_confidence=0.5)
            for stage, ms in report.timings_ms.items():
                stages[stage].append(ms)
    lines = ["| step (in-process, one at a time) | p50 ms | p90 ms |", "|---|---|---|"]
    for stage, values in stages.items():
        lines.append(f"| {stage} | {percentile(values, 50):.1f} | {percentile(values, 90):.1f} |")
    return "\n".join(lines), stages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos for the latency figures")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each throughput level")
    parser.add_argument("--canvas", type=int, help="serve a variant of the committed model with this canvas")
    parser.add_argument("--prototxt", choices=("deploy", "trained"), help="... and/or this PROTOTXT parameter")
    args = parser.parse_args(argv)

    photos = bench_photos()
    ensure_face_detector_artifact()
    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        work = Path(tmp)
        http, grpc_port, metrics = free_port(), free_port(), free_port()
        triton_log = work / "tritonserver.log"
        repository = MODEL_REPOSITORY
        if args.canvas or args.prototxt:
            repository = work / "repository"
            write_face_detector_variant(MODEL_REPOSITORY, repository, canvas_size=args.canvas, prototxt=args.prototxt)
        triton = start_triton(repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics, log_path=triton_log)
        service = None
        try:
            wait_ready(f"127.0.0.1:{http}", 600, process=triton, log_path=triton_log)
            triton_url = f"127.0.0.1:{grpc_port}"
            detector = TritonDetector(triton_url, "face_detector", timeout_s=60)
            info = detector.check()
            service, address = start_service(triton_url, work / "vision.log")
            channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 32 * 1024 * 1024)])
            stub = vision_pb2_grpc.VisionServiceStub(channel)
            wait_serving(stub, photos[0].data)
            baseline = OpenCvDnn()
            for photo in photos:  # warm-up both sides (first-call costs are not per-image costs)
                call_ms(stub, photo.data)
                baseline(photo.data)
            idle_rss, _ = rss_mb(service.pid)

            stages, _ = stage_table(photos, detector, args.rounds)
            service_ms: list[float] = []
            opencv_ms: list[float] = []
            for _ in range(args.rounds):
                for photo in photos:
                    service_ms.append(call_ms(stub, photo.data))
                    opencv_ms.append(baseline(photo.data))
            rates = {c: throughput(stub, photos, c, args.seconds) for c in CONCURRENCY}
            rss, peak = rss_mb(service.pid)
            channel.close()
        finally:
            if service is not None:
                service.terminate()
                service.wait(timeout=30)
            stop_triton(triton)

    latency_ratio = percentile(service_ms, 50) / percentile(opencv_ms, 50)
    throughput_ratio = rates[16] / rates[1]
    sizes = sorted({f"{p.name}" for p in photos})
    report = "\n".join(
        [
            f"### Vision benchmark ({len(photos)} photos x {args.rounds} rounds, canvas {info.canvas}, "
            f"{os.cpu_count()} CPU cores, Triton on CPU)",
            "",
            f"Photos: {', '.join(sizes)}",
            "",
            stages,
            "",
            "| path (concurrency 1, alternating) | p50 ms | p90 ms |",
            "|---|---|---|",
            f"| DetectFaces through the service (gRPC) | {percentile(service_ms, 50):.1f} | {percentile(service_ms, 90):.1f} |",
            f"| OpenCV DNN in-process (imdecode + blobFromImage + forward) | {percentile(opencv_ms, 50):.1f} "
            f"| {percentile(opencv_ms, 90):.1f} |",
            "",
            "| concurrency | photos/s |",
            "|---|---|",
            *(f"| {c} | {rate:.1f} |" for c, rate in rates.items()),
            "",
            "| target | measured | ratio | met |",
            "|---|---|---|---|",
            f"| DetectFaces p50 (c1) <= {LATENCY_RATIO_TARGET} x OpenCV DNN p50 | {percentile(service_ms, 50):.1f} ms vs "
            f"{percentile(opencv_ms, 50):.1f} ms | {latency_ratio:.2f} x | {'yes' if latency_ratio <= LATENCY_RATIO_TARGET else 'NO'} |",
            f"| throughput c16 >= {THROUGHPUT_RATIO_TARGET} x c1 | {rates[16]:.1f} vs {rates[1]:.1f} photos/s "
            f"| {throughput_ratio:.2f} x | {'yes' if throughput_ratio >= THROUGHPUT_RATIO_TARGET else 'NO'} |",
            f"| service VmRSS <= {RSS_TARGET_MB} MB | {rss:.0f} MB (idle {idle_rss:.0f}, peak {peak:.0f}) "
            f"| {rss / RSS_TARGET_MB:.2f} x | {'yes' if peak <= RSS_TARGET_MB else 'NO'} |",
        ]
    )
    print(report)
    out = Path("bench/out/vision.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
