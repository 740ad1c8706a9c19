"""Accuracy study: does the photo show a face? Precision and recall per class, and the thresholds per view kind.

Run with ``make accuracy`` (``make photos`` first fetches the extra photos; ``python -m bench.accuracy``).

One pass through a real Triton (the committed model_repository, the vision service's own decode, views and
mapping code) collects every candidate view's raw detections for every photo: the whole photo, its tiles at
600 and at 900 px, and the photo turned 90° and 270°. Everything after that is offline: the merge
(vision_service/merge.py) is replayed for each configuration — tile size, sideways on or off, one confidence
threshold per view kind on a grid — so one Triton pass decides all of them. The raw detections are kept in
bench/out/accuracy-raw.pickle; ``--reuse`` sweeps again without Triton.

Chosen: among the configurations meeting both targets (precision >= 0.97, recall >= 0.95), the fewest false
alarms, then the highest recall; each threshold then moves to the middle of the range of values that does
exactly as well with the others held (that range, printed, is its margin). Prints markdown (README, "Accuracy").
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from face_model.triton_local import start_triton, stop_triton, wait_ready
from bench.photo_set import CLASSES, Photo, is_composite, photo_set
from bench.support import MODEL_REPOSITORY, ensure_face_detector_artifact, free_port
from vision_service.decode import decode_image
from vision_service.detector import TritonDetector
from vision_service.merge import MergeRules, merge
from vision_service.views import (
    SIDEWAYS,
    TILE,
    TILE_OVERLAP,
    WHOLE,
    Box,
    TileGrid,
    render,
    sideways_views,
    tile_views,
    to_photo,
    whole_view,
)

TILE_SIDES = (0, 600, 900)
GRID = tuple(round(t, 2) for t in np.arange(0.5, 0.991, 0.05))  # coarse; choose() refines by 0.01
PRECISION_TARGET = 0.97
RECALL_TARGET = 0.95
RAW_FLOOR = 0.3  # detections below this are never kept by any threshold on the grid
MAX_BYTES, MAX_PIXELS = 16 * 1024 * 1024, 50_000_000
RAW_PATH = Path("bench/out/accuracy-raw.pickle")


@dataclass(frozen=True)
class Raw:
    """One photo's detections per view group: "whole", "tiles 600", "tiles 900", "sideways"."""

    name: str
    groups: dict[str, list[Box]]
    canvases: dict[str, int]


def collect(photo: Photo, detector: TritonDetector) -> Raw:
    canvas = detector.info.canvas  # type: ignore[union-attr]
    decoded = decode_image(photo.data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, fit=max(TILE_SIDES))
    width, height = decoded.width, decoded.height
    plans = {
        "whole": [whole_view(width, height, canvas)],
        **{f"tiles {side}": tile_views(width, height, canvas, TileGrid(side, TILE_OVERLAP)) for side in TILE_SIDES if side},
        "sideways": sideways_views(width, height, canvas),
    }
    groups: dict[str, list[Box]] = {}
    for group, views in plans.items():
        boxes: list[Box] = []
        for start in range(0, len(views), 32):
            chunk = views[start : start + 32]
            results = detector.detect_batch(render(decoded.pixels, width, height, chunk, canvas), timeout_s=600)
            for view, result in zip(chunk, results):
                boxes += to_photo(view, result.rows, result.count, width, height, RAW_FLOOR)
        groups[group] = boxes
    return Raw(photo.name, groups, {group: len(views) for group, views in plans.items()})


def collect_all(photos: Sequence[Photo], grpc_url: str) -> dict[str, Raw]:
    detector = TritonDetector(grpc_url, "face_detector", timeout_s=600)
    detector.check()
    started = time.monotonic()
    # Two photos in flight: the committed config has two CPU instances.
    with ThreadPoolExecutor(max_workers=2) as pool:
        raws = list(pool.map(lambda p: collect(p, detector), photos))
    detector.close()
    print(f"collected {len(raws)} photos in {time.monotonic() - started:.0f} s", flush=True)
    return {raw.name: raw for raw in raws}


@dataclass(frozen=True)
class Config:
    tile_side: int
    sideways: bool
    whole: float
    tile: float
    side: float
    rules: MergeRules = MergeRules()

    @property
    def thresholds(self) -> dict[str, float]:
        return {WHOLE: self.whole, TILE: self.tile, SIDEWAYS: self.side}

    def label(self) -> str:
        tiles = f"tiles {self.tile_side}" if self.tile_side else "no tiles"
        side = f", sideways {self.side:.2f}" if self.sideways else ", no sideways"
        tile = f", tile {self.tile:.2f}" if self.tile_side else ""
        return f"whole {self.whole:.2f}{tile}{side} ({tiles})"


def faces(raw: Raw, photo: Photo, config: Config) -> tuple[list[Box], int]:
    """What the service would answer for this photo under ``config``: the kept boxes and the canvases used."""
    upright = raw.groups["whole"] + (raw.groups[f"tiles {config.tile_side}"] if config.tile_side else [])
    canvases = 1 + (raw.canvases[f"tiles {config.tile_side}"] if config.tile_side else 0)
    kept = merge(upright, config.thresholds, config.rules)
    if not kept and config.sideways:
        kept = merge(raw.groups["sideways"], config.thresholds, config.rules)
        canvases += raw.canvases["sideways"]
    if photo.region is not None:  # a composite: only a box on the pasted portrait is its face
        left, top, right, bottom = photo.region
        kept = [b for b in kept if left <= (b.left + b.right) / 2 <= right and top <= (b.top + b.bottom) / 2 <= bottom]
    return kept, canvases


@dataclass(frozen=True)
class Outcome:
    said_yes: dict[str, bool]
    counts: dict[str, int]
    canvases: dict[str, int]

    def tally(self, photos: Sequence[Photo]) -> tuple[int, int, int, int]:
        tp = sum(self.said_yes[p.name] for p in photos if p.has_face)
        fp = sum(self.said_yes[p.name] for p in photos if not p.has_face)
        fn = sum(p.has_face for p in photos) - tp
        tn = sum(not p.has_face for p in photos) - fp
        return tp, fp, fn, tn


def evaluate(raws: dict[str, Raw], photos: Sequence[Photo], config: Config) -> Outcome:
    said, counts, canvases = {}, {}, {}
    for photo in photos:
        kept, used = faces(raws[photo.name], photo, config)
        said[photo.name], counts[photo.name], canvases[photo.name] = bool(kept), len(kept), used
    return Outcome(said, counts, canvases)


def precision_recall(outcome: Outcome, photos: Sequence[Photo]) -> tuple[float, float, int]:
    tp, fp, fn, _ = outcome.tally(photos)
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0), fp


Score = tuple[bool, bool, int, float, int]
FINE = tuple(round(t, 2) for t in np.arange(0.5, 0.995, 0.01))
AXES = ("whole", "tile", "side")


def score(raws: dict[str, Raw], photos: Sequence[Photo], config: Config) -> Score:
    """Both targets met first; among those the fewest false alarms, then the highest recall (failing that,
    precision met and the highest recall)."""
    precision, recall, fp = precision_recall(evaluate(raws, photos, config), photos)
    both = precision >= PRECISION_TARGET and recall >= RECALL_TARGET
    return (both, precision >= PRECISION_TARGET, -fp if both else 0, recall, -fp)


def axes(config: Config) -> list[str]:
    return ["whole"] + (["tile"] if config.tile_side else []) + (["side"] if config.sideways else [])


def choose(
    raws: dict[str, Raw], photos: Sequence[Photo], tile_side: int, sideways: bool, rules: MergeRules = MergeRules()
) -> tuple[Config, dict[str, tuple[float, float]]]:
    """The best thresholds for one view layout, and for each threshold the range that does exactly as well.

    A coarse grid (0.05) over every kind's threshold, then each threshold alone on a fine grid (0.01) with the
    others held: it moves to the middle of the range of values that score the same, and that range is the
    margin written in the README.
    """
    sides = GRID if sideways else (1.0,)
    tiles = GRID if tile_side else (1.0,)
    best: tuple[Score, Config] | None = None
    for whole, tile, side in itertools.product(GRID, tiles, sides):
        config = Config(tile_side, sideways, whole, tile, side, rules)
        scored = score(raws, photos, config)
        if best is None or scored > best[0]:
            best = (scored, config)
    assert best is not None
    target, config = best
    ranges: dict[str, tuple[float, float]] = {}
    for axis in axes(config):
        same = [v for v in FINE if score(raws, photos, replace(config, **{axis: v})) == target]
        current = getattr(config, axis)
        # The contiguous run of equally good values around the current one.
        run = [current]
        for step in (-1, 1):
            value = current
            while round(value + step * 0.01, 2) in same:
                value = round(value + step * 0.01, 2)
                run.append(value)
        low, high = min(run), max(run)
        ranges[axis] = (low, high)
        config = replace(config, **{axis: round((low + high) / 2, 2)})
    return config, ranges


def class_table(outcome: Outcome, photos: Sequence[Photo]) -> list[str]:
    lines = [
        "| class | photos | said \"face\" | recall | false alarms | precision, this class + every negative | face count exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls in CLASSES:
        members = [p for p in photos if p.cls == cls]
        if not members:
            continue
        yes = sum(outcome.said_yes[p.name] for p in members)
        positives = [p for p in members if p.has_face]
        if positives:
            recall = f"{sum(outcome.said_yes[p.name] for p in positives) / len(positives):.2f}"
            exact = sum(outcome.counts[p.name] == p.faces for p in positives if p.region is None)
            counted = sum(p.region is None for p in positives)
            count = f"{exact}/{counted}" if counted else "—"
            false_alarms = sum(outcome.said_yes[p.name] for p in photos if not p.has_face)
            precision = f"{yes / (yes + false_alarms):.2f}" if yes + false_alarms else "—"
            lines.append(f"| {cls} | {len(members)} | {yes} | {recall} | — | {precision} | {count} |")
        else:
            lines.append(f"| {cls} | {len(members)} | {yes} | — | {yes} | — | — |")
    return lines


def margins(raws: dict[str, Raw], photos: Sequence[Photo], config: Config) -> str:
    """Per view kind: the strongest raw score a negative photo got and the weakest decisive score of a positive."""
    parts = []
    for kind, threshold in config.thresholds.items():
        if (kind == TILE and not config.tile_side) or (kind == SIDEWAYS and not config.sideways):
            continue
        negative = 0.0
        for photo in photos:
            if photo.has_face:
                continue
            group = {WHOLE: "whole", TILE: f"tiles {config.tile_side}", SIDEWAYS: "sideways"}[kind]
            scores = [b.confidence for b in raws[photo.name].groups[group] if b.view.kind == kind]
            negative = max([negative, *scores])
        decisive = []
        for photo in photos:
            kept, _ = faces(raws[photo.name], photo, config)
            if photo.has_face and kept and kept[0].view.kind == kind:
                decisive.append(kept[0].confidence)
        weakest = min(decisive, default=float("nan"))
        parts.append(
            f"{kind} {threshold:.2f}: strongest negative {negative:.2f} (margin {threshold - negative:+.2f}), "
            f"weakest positive it decides {weakest:.2f} (margin {weakest - threshold:+.2f}), decides {len(decisive)} photos"
        )
    return "; ".join(parts)


def report(raws: dict[str, Raw], photos: Sequence[Photo]) -> str:
    real = [p for p in photos if not is_composite(p)]
    lines = [
        f"{len(photos)} photos: {sum(p.has_face for p in real)} real photos with a face, "
        f"{sum(not p.has_face for p in real)} real photos without, {len(photos) - len(real)} composites "
        f"({sum(p.has_face for p in photos if is_composite(p))} with a face).",
        "",
        "| views | thresholds (chosen) | precision | recall | precision, real | recall, real | false alarms "
        "| canvases / photo (mean) | range of each threshold that does as well |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    layouts = [(t, s, MergeRules()) for t, s in itertools.product(TILE_SIDES, (False, True))]
    layouts.append((max(TILE_SIDES), True, MergeRules(tile_max_side=None)))
    chosen_overall = None
    for tile_side, sideways, rules in layouts:
        config, ranges = choose(raws, photos, tile_side, sideways, rules)
        outcome = evaluate(raws, photos, config)
        p_all, r_all, fp = precision_recall(outcome, photos)
        p_real, r_real, _ = precision_recall(outcome, real)
        views = ("whole" + (f" + tiles {tile_side}" if tile_side else "")) + (" + sideways" if sideways else "")
        if tile_side and rules.tile_max_side is None:
            views += " (no tile size cap)"
        spans = ", ".join(f"{axis} {low:.2f}–{high:.2f}" for axis, (low, high) in ranges.items())
        lines.append(
            f"| {views} | {config.label()} | {p_all:.2f} | {r_all:.2f} | {p_real:.2f} | {r_real:.2f} | {fp} "
            f"| {np.mean(list(outcome.canvases.values())):.1f} | {spans} |"
        )
        if tile_side == max(TILE_SIDES) and sideways and chosen_overall is None:
            chosen_overall = config
    assert chosen_overall is not None
    outcome = evaluate(raws, photos, chosen_overall)
    lines += ["", f"### Per class, {chosen_overall.label()}", "", *class_table(outcome, photos), ""]
    lines += ["Scores nearest the thresholds: " + margins(raws, photos, chosen_overall), ""]
    missed = [p.name for p in photos if p.has_face and not outcome.said_yes[p.name]]
    alarms = [p.name for p in photos if not p.has_face and outcome.said_yes[p.name]]
    wrong_counts = [
        f"{p.name} {outcome.counts[p.name]}/{p.faces}"
        for p in photos
        if p.has_face and p.region is None and outcome.counts[p.name] != p.faces
    ]
    sideways_cost = [p for p in photos if outcome.canvases[p.name] > 1 + raws[p.name].canvases[f"tiles {chosen_overall.tile_side}"]]
    lines += [
        f"Missed: {', '.join(missed) or 'none'}.",
        "",
        f"False alarms: {', '.join(alarms) or 'none'}.",
        "",
        f"Face counts off (found/labelled): {', '.join(wrong_counts) or 'none'}.",
        "",
        f"Sideways views were sent for {len(sideways_cost)} photos "
        f"({sum(not p.has_face for p in sideways_cost)} of the {sum(not p.has_face for p in photos)} without a face).",
    ]
    group = [p for p in photos if p.cls == "group"]
    lines += ["", "Group photos: " + ", ".join(f"{p.name} {outcome.counts[p.name]} of {p.faces}" for p in group) + "."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/accuracy.md"), help="also write the tables here")
    parser.add_argument("--reuse", action="store_true", help=f"sweep again over {RAW_PATH} without Triton")
    parser.add_argument("--triton", help="a running Triton's gRPC address (default: start one)")
    args = parser.parse_args(argv)

    photos = photo_set()
    print(f"photo set: {len(photos)} photos", flush=True)
    if args.reuse:
        raws = {name: Raw(name, groups, canvases) for name, (groups, canvases) in pickle.loads(RAW_PATH.read_bytes()).items()}
    elif args.triton:
        raws = collect_all(photos, args.triton)
    else:
        ensure_face_detector_artifact()
        with tempfile.TemporaryDirectory(prefix="accuracy-") as tmp:
            log = Path(tmp) / "tritonserver.log"
            http, grpc_port, metrics = free_port(), free_port(), free_port()
            process = start_triton(MODEL_REPOSITORY, http_port=http, grpc_port=grpc_port, metrics_port=metrics, log_path=log)
            try:
                wait_ready(f"127.0.0.1:{http}", 600, process=process, log_path=log)
                raws = collect_all(photos, f"127.0.0.1:{grpc_port}")
            finally:
                stop_triton(process)
    RAW_PATH.parent.mkdir(parents=True, exist_ok=True)
    # Plain dicts of views.Box, so the file reads back whichever module name this script ran under.
    RAW_PATH.write_bytes(pickle.dumps({name: (raw.groups, raw.canvases) for name, raw in raws.items()}))
    text = "### Face / no face on the photo set\n\n" + report(raws, photos)
    print(text)
    args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
