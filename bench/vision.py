"""Vision service vs. OpenCV's DNN on the same photos, side by side, plus throughput and the service's memory.

Run with ``make bench-vision`` (``python -m bench.vision``). Triton serves model_repository/ as committed
(its canvas, its dynamic batching); the vision service runs as its own process, exactly as deployed
(``python -m vision_service`` on a loopback port), so its resident memory can be read from /proc.

Measured:
- per image, in this process with the service's own code: decode, preprocess (letterbox), Triton round
  trip, total (p50/p90);
- DetectFaces through the service at concurrency 1 (p50/p90), alternating call by call with OpenCV DNN
  in-process doing the same views of the same photo (imdecode, the whole photo letterboxed plus the same
  tiles, then the two sideways turns when nothing was found; one blobFromImages + forward per request, as
  the service sends one batched request), so both see the same machine load and the same work;
- a whole photo webhook (simulator -> gunicorn gateway -> vision service -> disk -> TwiML reply), p50;
- throughput at concurrency 1, 4 and 16 through the service;
- the service's VmRSS (and peak VmHWM) after all of it.
Targets (issues 3 and 10, 2-core CPU): DetectFaces p50 at c1 <= 1.3 x OpenCV DNN's p50 on the same views;
photo webhook p50 <= 600 ms; throughput c16 >= 1.5 x c1; service RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench.baselines import CAFFE_MEAN_BGR, load_ssd
from bench.webhook import time_photo_webhooks
from face_model.repository import write_face_detector_variant
from face_model.triton_local import start_triton, stop_triton, wait_ready
from mediabot.v1 import vision_pb2, vision_pb2_grpc
from bench.photo_set import Photo, photo_set
from bench.support import MODEL_REPOSITORY, ensure_face_detector_artifact, free_port
from vision_service.config import Settings
from vision_service.detector import TritonDetector
from vision_service.pipeline import Limits, ViewPolicy, find_faces
from vision_service.views import View, sideways_views, upright_views

LATENCY_RATIO_TARGET = 1.3
THROUGHPUT_RATIO_TARGET = 1.5
RSS_TARGET_MB = 200
WEBHOOK_P50_TARGET_MS = 600
CONCURRENCY = (1, 4, 16)
LIMITS = Limits(max_bytes=16 * 1024 * 1024, max_pixels=50_000_000)


def bench_photos() -> list[Photo]:
    """Real photos as people send them: the packaged portraits, groups and scenes, plus two 6 MP phone-size JPEGs."""
    chosen = [
        "grace_hopper", "astronaut", "luispedro", "zidane", "bus", "friends", "cameraman",
        "chelsea_cat", "coffee", "motorcycle", "rocket", "page",
        "small_luispedro_on_motorcycle_4", "large_rocket", "group_of_eight", "grace_hopper_turned_90",
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


def policy() -> ViewPolicy:
    """The service's own defaults (config.py), so both sides do exactly the views the service does."""
    settings = Settings()
    return ViewPolicy(
        settings.face_min_confidence,
        settings.face_tile_min_confidence,
        settings.face_sideways_min_confidence,
        settings.face_tile_long_side,
        settings.face_sideways,
    )


class OpenCvDnn:
    """The baseline: the same caffemodel in OpenCV's DNN, in-process, on the same bytes and the same views.

    OpenCV decodes, resizes and crops (its own fast paths); views.py only says which rectangles, so the
    comparison is the service's whole path (gRPC, Triton, the python backend) against OpenCV doing the work.
    """

    def __init__(self) -> None:
        self.net = load_ssd()
        self.policy = policy()

    def _canvases(self, image: np.ndarray, views: list[View]) -> list[np.ndarray]:
        height, width = image.shape[:2]
        out = []
        scaled: dict[tuple[int, float, float], np.ndarray] = {}
        for view in views:
            key = (view.rotation, view.scale_x, view.scale_y)
            if key not in scaled:
                turned = image
                if view.rotation == 90:
                    turned = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
                elif view.rotation == 270:
                    turned = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
                h, w = turned.shape[:2]
                size = (max(1, round(w * view.scale_x)), max(1, round(h * view.scale_y)))
                scaled[key] = cv2.resize(turned, size, interpolation=cv2.INTER_AREA)
            left, top = round(view.region[0] * view.scale_x), round(view.region[1] * view.scale_y)
            canvas = np.zeros((300, 300, 3), np.uint8)
            crop = scaled[key][top : top + 300, left : left + 300]
            canvas[: crop.shape[0], : crop.shape[1]] = crop
            out.append(canvas)
        return out

    def _forward(self, canvases: list[np.ndarray]) -> np.ndarray:
        self.net.setInput(cv2.dnn.blobFromImages(canvases, 1.0, (300, 300), CAFFE_MEAN_BGR))
        return self.net.forward().reshape(-1, 7)

    def __call__(self, data: bytes) -> float:
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        height, width = image.shape[:2]
        rows = self._forward(self._canvases(image, upright_views(width, height, 300, self.policy.grid)))
        if self.policy.sideways and not (rows[:, 2] >= self.policy.min_confidence).any():
            self._forward(self._canvases(image, sideways_views(width, height, 300)))
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
    # What the sideways turns cost: photos where the upright views found a face vs. those where they did not.
    by_outcome: dict[str, list[float]] = {"total, a face found upright": [], "total, nothing upright (+2 turned views)": []}
    canvases: list[int] = []
    for _ in range(rounds):
        for photo in photos:
            report = find_faces(photo.data, detector=detector, limits=LIMITS, policy=policy())
            for stage, ms in report.timings_ms.items():
                stages[stage].append(ms)
            upright_found = any(not face.view.startswith("sideways") for face in report.faces)
            by_outcome[list(by_outcome)[0 if upright_found else 1]].append(report.timings_ms["total"])
            canvases.append(report.views)
    lines = [
        f"| step (in-process, one at a time; {np.mean(canvases):.1f} canvases per photo) | p50 ms | p90 ms |",
        "|---|---|---|",
    ]
    for stage, values in [*stages.items(), *by_outcome.items()]:
        if values:
            lines.append(f"| {stage} | {percentile(values, 50):.1f} | {percentile(values, 90):.1f} |")
    return "\n".join(lines), stages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the photos for the latency figures")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each throughput level")
    parser.add_argument("--runs-webhook", type=int, default=20, help="timed whole photo webhooks (simulator -> gateway)")
    parser.add_argument("--canvas", type=int, help="serve a variant of the committed model with this canvas")
    parser.add_argument("--prototxt", choices=("deploy", "trained"), help="... and/or this PROTOTXT parameter")
    parser.add_argument("--instances", type=int, help="... and/or this many CPU instances")
    parser.add_argument("--threads", type=int, help="... and/or this NUM_THREADS per instance")
    args = parser.parse_args(argv)

    photos = bench_photos()
    ensure_face_detector_artifact()
    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        work = Path(tmp)
        http, grpc_port, metrics = free_port(), free_port(), free_port()
        triton_log = work / "tritonserver.log"
        repository = MODEL_REPOSITORY
        if args.canvas or args.prototxt or args.instances or args.threads:
            repository = work / "repository"
            write_face_detector_variant(
                MODEL_REPOSITORY,
                repository,
                canvas_size=args.canvas,
                prototxt=args.prototxt,
                instance_count=args.instances,
                num_threads=args.threads,
            )
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
            webhook_photos = []
            for name in ("grace_hopper", "zidane", "friends", "astronaut"):
                path = work / f"{name}.jpg"
                path.write_bytes(next(p for p in photos if p.name == name).data)
                webhook_photos.append(path)
            webhook_s = time_photo_webhooks(address, webhook_photos, args.runs_webhook, work)
        finally:
            if service is not None:
                service.terminate()
                service.wait(timeout=30)
            stop_triton(triton)

    latency_ratio = percentile(service_ms, 50) / percentile(opencv_ms, 50)
    webhook_p50 = percentile(webhook_s, 50) * 1000
    throughput_ratio = rates[16] / rates[1]
    sizes = sorted({f"{p.name}" for p in photos})
    report = "\n".join(
        [
            f"### Vision benchmark ({len(photos)} photos x {args.rounds} rounds, canvas {info.canvas}, "
            f"tiles at {policy().tile_long_side} px, {os.cpu_count()} CPU cores, Triton on CPU)",
            "",
            f"Photos: {', '.join(sizes)}",
            "",
            stages,
            "",
            "| path (concurrency 1, alternating) | p50 ms | p90 ms |",
            "|---|---|---|",
            f"| DetectFaces through the service (gRPC) | {percentile(service_ms, 50):.1f} | {percentile(service_ms, 90):.1f} |",
            f"| OpenCV DNN in-process, same views (imdecode + resize/crop + blobFromImages + forward) "
            f"| {percentile(opencv_ms, 50):.1f} | {percentile(opencv_ms, 90):.1f} |",
            f"| photo webhook (simulator -> gunicorn gateway -> vision -> disk -> reply) | {webhook_p50:.1f} "
            f"| {percentile(webhook_s, 90) * 1000:.1f} |",
            "",
            "| concurrency | photos/s |",
            "|---|---|",
            *(f"| {c} | {rate:.1f} |" for c, rate in rates.items()),
            "",
            "| target | measured | ratio | met |",
            "|---|---|---|---|",
            f"| DetectFaces p50 (c1) <= {LATENCY_RATIO_TARGET} x OpenCV DNN p50 | {percentile(service_ms, 50):.1f} ms vs "
            f"{percentile(opencv_ms, 50):.1f} ms | {latency_ratio:.2f} x | {'yes' if latency_ratio <= LATENCY_RATIO_TARGET else 'NO'} |",
            f"| photo webhook p50 <= {WEBHOOK_P50_TARGET_MS} ms | {webhook_p50:.0f} ms | "
            f"{webhook_p50 / WEBHOOK_P50_TARGET_MS:.2f} x | {'yes' if webhook_p50 <= WEBHOOK_P50_TARGET_MS else 'NO'} |",
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
