"""Accuracy study: does the photo show a face? Precision and recall on the labelled photo set.

Run with ``python -m bench.accuracy`` (``make accuracy`` if the Makefile has it). It measures, through a
real Triton server and the vision service's own decode/letterbox/postprocess code:
- canvas 300 (the network's native size) vs 600 (the long side at 600 px, letterboxed), each with the
  model's mean (104,117,123) and OpenCV's sample mean (104,177,123), the "trained" prototxt geometry,
  and on 600 the prior steps fitted to the canvas (PRIOR_STEPS "canvas", what config.pbtxt serves);
- several decision thresholds (a photo "has a face" when its best detection reaches the threshold);
- at each threshold, on the real photos with faces, whether the number of detections is the number of
  faces a person counts (duplicated or missed faces show here, not in the yes/no decision);
- time per image (decode + letterbox + Triton round trip, one at a time) per variant;
and, on the same photos, OpenCV's own recipe (imdecode, squash to 300x300, mean 104,177,123) and OpenCV's
Haar cascade as the classical baseline. Prints markdown tables (the README's "Accuracy" section).

All variants are loaded in one temporary Triton model repository (written by
face_model.repository.write_face_detector_variant), so one Triton start serves them all.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.baselines import CAFFE_MEAN_BGR, SAMPLE_MEAN_BGR, ClassicSsd, HaarCascade
from face_model.repository import write_face_detector_variant
from face_model.triton_local import start_triton, stop_triton, wait_ready
from tests.fixtures.photos import Photo, photo_set
from tests.fixtures.triton import MODEL_REPOSITORY, ensure_face_detector_artifact, free_port
from vision_service.detector import TritonDetector
from vision_service.pipeline import Limits, find_faces

THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
LIMITS = Limits(max_bytes=16 * 1024 * 1024, max_pixels=50_000_000)


@dataclass(frozen=True)
class Variant:
    canvas: int
    mean_bgr: tuple[float, float, float]
    prototxt: str = "deploy"
    prior_steps: str = "prototxt"

    @property
    def model_name(self) -> str:
        return f"face_{self.canvas}_{int(self.mean_bgr[1])}_{self.prototxt}_{self.prior_steps}"

    @property
    def label(self) -> str:
        steps = ", canvas steps" if self.prior_steps == "canvas" else ""
        return f"Triton SSD, canvas {self.canvas}, mean G={int(self.mean_bgr[1])}, {self.prototxt}{steps}"


VARIANTS = (
    Variant(300, CAFFE_MEAN_BGR),
    Variant(300, SAMPLE_MEAN_BGR),
    Variant(600, CAFFE_MEAN_BGR),
    Variant(600, SAMPLE_MEAN_BGR),
    Variant(300, CAFFE_MEAN_BGR, "trained"),
    Variant(600, CAFFE_MEAN_BGR, "trained"),
    Variant(600, CAFFE_MEAN_BGR, "trained", "canvas"),
)


@dataclass(frozen=True)
class Scores:
    """The best confidence each photo got (or, for a yes/no detector, 1.0/0.0), and the time per photo."""

    label: str
    best: dict[str, float]
    ms_per_image: list[float]
    # Every detection's confidence, whole image, per photo (for the face counts).
    confidences: dict[str, list[float]]
    thresholded: bool = True


Box = tuple[int, int, int, int]
Detect = Callable[[bytes], list[tuple[float, Box]]]


def best_confidence(photo: Photo, detections: list[tuple[float, Box]]) -> float:
    """The photo's best detection; on a composite only one centred on the pasted portrait counts."""
    if photo.region is not None:
        left, top, right, bottom = photo.region
        detections = [
            (confidence, box)
            for confidence, box in detections
            if left <= (box[0] + box[2]) / 2 <= right and top <= (box[1] + box[3]) / 2 <= bottom
        ]
    return max((confidence for confidence, _ in detections), default=0.0)


def score(label: str, photos: Sequence[Photo], detect: Detect, thresholded: bool = True) -> Scores:
    for photo in photos:
        photo.data  # noqa: B018 - make the composites before timing anything
    detect(photos[0].data)  # warm-up: first-call costs (lazy init, caches) are not per-image costs
    best: dict[str, float] = {}
    confidences: dict[str, list[float]] = {}
    times: list[float] = []
    for photo in photos:
        started = time.perf_counter()
        detections = detect(photo.data)
        times.append((time.perf_counter() - started) * 1000)
        best[photo.name] = best_confidence(photo, detections)
        confidences[photo.name] = [confidence for confidence, _ in detections]
    return Scores(label, best, times, confidences, thresholded)


def triton_detect(detector: TritonDetector) -> Detect:
    def detect(data: bytes) -> list[tuple[float, Box]]:
        report = find_faces(data, detector=detector, limits=LIMITS, min_confidence=0.0, deadline=time.monotonic() + 120)
        return [(f.confidence, (f.left, f.top, f.right, f.bottom)) for f in report.faces]

    return detect


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int
    recall_real: float
    recall_small: float
    count_right_real: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def is_composite(photo: Photo) -> bool:
    return photo.source.startswith("composite:")


def count(scores: Scores, photos: Sequence[Photo], threshold: float) -> Counts:
    said_yes = {p.name: scores.best[p.name] >= threshold for p in photos}
    tp = sum(said_yes[p.name] for p in photos if p.has_face)
    fp = sum(said_yes[p.name] for p in photos if not p.has_face)
    positives_real = [p for p in photos if p.has_face and not is_composite(p)]
    positives_small = [p for p in photos if p.has_face and is_composite(p)]
    return Counts(
        tp=tp,
        fp=fp,
        fn=sum(p.has_face for p in photos) - tp,
        tn=sum(not p.has_face for p in photos) - fp,
        recall_real=sum(said_yes[p.name] for p in positives_real) / len(positives_real),
        recall_small=sum(said_yes[p.name] for p in positives_small) / len(positives_small),
        count_right_real=sum(
            sum(c >= threshold for c in scores.confidences[p.name]) == p.faces for p in positives_real
        ) / len(positives_real),
    )


def table(all_scores: Sequence[Scores], photos: Sequence[Photo]) -> str:
    positives = sum(p.has_face for p in photos)
    real = sum(p.has_face and not is_composite(p) for p in photos)
    lines = [
        f"{len(photos)} photos: {positives} with a face ({real} real photos, {positives - real} small-face "
        f"composites), {len(photos) - positives} without.",
        "",
        "| detector | threshold | precision | recall | recall, real photos | recall, small faces | false alarms "
        "| F1 | face count right, real photos | ms/image (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scores in all_scores:
        median_ms = statistics.median(scores.ms_per_image)
        for threshold in THRESHOLDS if scores.thresholded else (0.5,):
            c = count(scores, photos, threshold)
            shown = f"{threshold:.1f}" if scores.thresholded else "—"
            lines.append(
                f"| {scores.label} | {shown} | {c.precision:.2f} | {c.recall:.2f} | {c.recall_real:.2f} "
                f"| {c.recall_small:.2f} | {c.fp} | {c.f1:.2f} | {c.count_right_real:.2f} | {median_ms:.0f} |"
            )
    return "\n".join(lines)


def errors(scores: Scores, photos: Sequence[Photo], threshold: float) -> str:
    missed = [f"{p.name} ({scores.best[p.name]:.2f})" for p in photos if p.has_face and scores.best[p.name] < threshold]
    alarms = [f"{p.name} ({scores.best[p.name]:.2f})" for p in photos if not p.has_face and scores.best[p.name] >= threshold]
    return (
        f"**{scores.label} at {threshold}** — missed: {', '.join(missed) or 'none'}; "
        f"false alarms: {', '.join(alarms) or 'none'}."
    )


def per_photo(all_scores: Sequence[Scores], photos: Sequence[Photo]) -> str:
    short = [s.label.replace("Triton SSD, ", "").replace("canvas ", "") for s in all_scores]
    lines = ["| photo | face? | kind | " + " | ".join(short) + " |", "|---|---|---|" + "---|" * len(all_scores)]
    for p in photos:
        cells = " | ".join(f"{s.best[p.name]:.2f}" if s.thresholded else str(int(s.best[p.name])) for s in all_scores)
        lines.append(f"| {p.name} | {'yes' if p.has_face else 'no'} | {p.kind} | {cells} |")
    return "\n".join(lines)


def measure_triton(photos: Sequence[Photo], variants: Sequence[Variant], work: Path) -> list[Scores]:
    ensure_face_detector_artifact()
    repository = work / "repository"
    repository.mkdir()
    for variant in variants:
        # One instance per variant, 2 torch threads: the 2-core machine, one photo at a time.
        write_face_detector_variant(
            MODEL_REPOSITORY,
            repository,
            name=variant.model_name,
            canvas_size=variant.canvas,
            mean_bgr=variant.mean_bgr,
            prototxt=variant.prototxt,
            prior_steps=variant.prior_steps,
            num_threads=2,
        )
    log = work / "tritonserver.log"
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    process = start_triton(repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics, log_path=log)
    try:
        waited = wait_ready(f"127.0.0.1:{http}", 600, process=process, log_path=log)
        print(f"Triton ready with {len(variants)} model variants in {waited:.0f} s", flush=True)
        results = []
        for variant in variants:
            detector = TritonDetector(f"127.0.0.1:{grpc_port}", variant.model_name, timeout_s=120)
            info = detector.check()
            assert info.canvas == variant.canvas, (info, variant)
            results.append(score(variant.label, photos, triton_detect(detector)))
            detector.close()
            print(f"  {variant.label}: done", flush=True)
        return results
    finally:
        stop_triton(process)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/accuracy.md"), help="also write the tables here")
    parser.add_argument("--show", type=float, default=0.6, help="list the errors at this threshold")
    args = parser.parse_args(argv)

    photos = photo_set()
    print(f"photo set: {len(photos)} photos", flush=True)
    with tempfile.TemporaryDirectory(prefix="accuracy-") as tmp:
        all_scores = measure_triton(photos, VARIANTS, Path(tmp))
    classic = ClassicSsd(SAMPLE_MEAN_BGR)
    all_scores.append(score("OpenCV sample recipe (squash 300x300, mean G=177), in-process", photos, classic.detect))
    haar = HaarCascade()
    all_scores.append(score("OpenCV Haar cascade (frontalface_default, full image)", photos, haar.detect, False))

    report = "\n\n".join(
        [
            "### Face / no face on the photo set",
            table(all_scores, photos),
            "### Errors",
            "\n\n".join(errors(s, photos, args.show if s.thresholded else 0.5) for s in all_scores),
            "### Best confidence per photo (Haar: 1 = found a face)",
            per_photo(all_scores, photos),
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
