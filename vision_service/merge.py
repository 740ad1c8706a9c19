"""All views' detections -> one list of faces on the photo: thresholds per view kind, cut faces out, NMS.

Pure functions over views.Box. The rules, in order:

1. each view kind has its own confidence threshold (tiles see more background, so more chances of a
   false alarm; sideways views run only on photos where nothing upright was found) — the values come from
   bench/accuracy.py (README, "Accuracy");
2. a tile detection that touches one of the tile's inner borders is a face cut by the tile: the overlap
   makes sure a face the tiles are responsible for is whole in a neighbouring tile, so it is dropped here;
3. a tile detection larger than ``tile_max_side`` of the canvas (200 px of 300) is the whole view's job (that face is at
   least 50 px in the whole view, which finds such faces): up close, a tile mostly finds false faces that
   size — a cat's head, an apple — or a part of a real face;
4. a tile detection lying mostly inside a face the whole view found is part of that face (an eye and a
   nose seen up close), not another face;
5. non-maximum suppression in photo coordinates across every view, most confident first: a box overlapping
   a kept one (IoU) or lying mostly inside it, or containing it, is the same face seen again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vision_service.views import TILE, WHOLE, Box

# A tile detection within this many canvas pixels of an inner border counts as touching it.
EDGE_MARGIN_PX = 2.0


@dataclass(frozen=True)
class MergeRules:
    # IoU above which two boxes are the same face.
    iou: float = 0.3
    # Share of the smaller box inside the larger above which they are the same face (a part of it).
    containment: float = 0.6
    # Largest side, as a share of the canvas, of a face a tile answers for (None: any size). On the photo
    # set (300 px canvas) the tiles' false alarms on negatives were 250-275 px (a cat, an apple, an orange),
    # their real faces 65-205 px, and every real face over 150 px was also found by the whole view
    # (bench/accuracy.py): 2/3, i.e. 200 px.
    tile_max_side: float | None = 2 / 3


def intersection(a: Box, b: Box) -> float:
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.bottom, b.bottom) - max(a.top, b.top)
    return max(0.0, width) * max(0.0, height)


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def contained(small: Box, large: Box) -> float:
    """Share of ``small``'s area that lies inside ``large``."""
    return intersection(small, large) / small.area if small.area > 0 else 0.0


def touches_inner_edge(box: Box) -> bool:
    """True when a tile's box reaches one of the tile's borders that cut through the photo."""
    view = box.view
    if view.kind != TILE:
        return False
    margin_x, margin_y = EDGE_MARGIN_PX / view.scale_x, EDGE_MARGIN_PX / view.scale_y
    left, top, right, bottom = view.region
    inner_left, inner_top, inner_right, inner_bottom = view.inner_edges
    return (
        (inner_left and box.left <= left + margin_x)
        or (inner_top and box.top <= top + margin_y)
        or (inner_right and box.right >= right - margin_x)
        or (inner_bottom and box.bottom >= bottom - margin_y)
    )


def too_large_for_tile(box: Box, rules: MergeRules) -> bool:
    if rules.tile_max_side is None or box.view.kind != TILE:
        return False
    side = max((box.right - box.left) * box.view.scale_x, (box.bottom - box.top) * box.view.scale_y)
    return side > rules.tile_max_side * box.view.canvas


def same_face(a: Box, b: Box, rules: MergeRules) -> bool:
    if iou(a, b) > rules.iou:
        return True
    smaller, larger = (a, b) if a.area <= b.area else (b, a)
    return contained(smaller, larger) > rules.containment


def merge(boxes: Iterable[Box], thresholds: Mapping[str, float], rules: MergeRules = MergeRules()) -> list[Box]:
    """The faces of the photo, most confident first; ``thresholds`` maps each view kind to its minimum confidence."""
    candidates = [b for b in boxes if b.confidence >= thresholds[b.view.kind]]
    wholes = [b for b in candidates if b.view.kind == WHOLE]
    kept_candidates = []
    for box in candidates:
        if box.view.kind == TILE:
            if touches_inner_edge(box) or too_large_for_tile(box, rules):
                continue
            if any(contained(box, whole) > rules.containment for whole in wholes):
                continue
        kept_candidates.append(box)
    kept: list[Box] = []
    for box in sorted(kept_candidates, key=lambda b: b.confidence, reverse=True):
        if not any(same_face(box, other, rules) for other in kept):
            kept.append(box)
    return kept
