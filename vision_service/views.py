"""The views of one photo the detector is shown, and the way from a view's canvas back to the photo's pixels.

The network sees a fixed square canvas (300 px); a face smaller than about 20 px on it is lost. One photo is
therefore shown several ways, all in one batched request:

- ``whole``: the whole photo letterboxed onto the canvas (large and medium faces; what a portrait needs);
- ``tile``: the photo scaled so its long side is ``tile_long_side`` px and cut into canvas-sized tiles that
  overlap by ``tile_overlap`` px, so a small face is 2-4x larger than in the whole view and whole in at
  least one tile;
- ``sideways``: the whole photo turned 90° or 270°, for a phone photo stored on its side without an EXIF
  orientation tag (pipeline.py shows these only when the upright views found nothing).

Every view is described in the coordinates of the upright photo (full size, whatever scale it was decoded
at), so a detection maps back with pure arithmetic, unit-tested against hand-computed boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

WHOLE = "whole"
TILE = "tile"
SIDEWAYS = "sideways"
VIEW_KINDS = (WHOLE, TILE, SIDEWAYS)

# Tiles overlap by this many pixels of the enlarged photo, so any face up to this size is whole in some tile
# (at the default 900 px long side, 100 px there is 33 px in the whole 300 px view, which finds faces that size).
TILE_OVERLAP = 100

# float32 coordinates are off by ~1e-7 relative (0.2f * 1200 = 240.0000036); without this slack, floor/ceil
# would widen an exact box by a pixel.
_FLOAT32_SLACK = 1e-3


@dataclass(frozen=True)
class TileGrid:
    """How the tiles are laid: the photo's long side scaled to ``long_side`` px, tiles overlapping by ``overlap``."""

    long_side: int
    overlap: int


@dataclass(frozen=True)
class View:
    """One canvas: which part of the photo it shows, turned how, at what scale.

    ``region`` is (left, top, right, bottom) in pixels of the photo *as turned by* ``rotation`` (for 0° that is
    the upright photo); ``scale_x``/``scale_y`` are canvas pixels per such pixel; ``rotation`` is 0, 90 or 270
    degrees counter-clockwise, as Pillow's ``Image.Transpose.ROTATE_90``/``ROTATE_270`` turn an image.
    ``edges`` says which sides of the region are cut through the photo (a tile's inner borders): a detection
    touching one is a face cut in two, whole in a neighbouring tile.
    """

    kind: str
    name: str
    canvas: int
    region: tuple[float, float, float, float]
    scale_x: float
    scale_y: float
    rotation: int = 0
    # (left, top, right, bottom): True where that side of the region is inside the photo.
    inner_edges: tuple[bool, bool, bool, bool] = (False, False, False, False)


@dataclass(frozen=True)
class Box:
    """A detection in pixels of the upright photo (floats until the very end), with the view that found it."""

    left: float
    top: float
    right: float
    bottom: float
    confidence: float
    view: View

    @property
    def area(self) -> float:
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)


def rotated_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


def whole_view(width: int, height: int, canvas: int, rotation: int = 0) -> View:
    """The whole photo (turned by ``rotation``) letterboxed at the top-left of the canvas."""
    w, h = rotated_size(width, height, rotation)
    scale = canvas / max(w, h)
    kind, name = (WHOLE, WHOLE) if rotation == 0 else (SIDEWAYS, f"{SIDEWAYS} {rotation}")
    return View(kind, name, canvas, (0.0, 0.0, float(w), float(h)), scale, scale, rotation)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, evenly spread, overlapping by >= ``overlap``."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def tile_views(width: int, height: int, canvas: int, grid: TileGrid) -> list[View]:
    """Canvas-sized tiles of the photo scaled to ``grid.long_side``; none when that would not enlarge the photo.

    The photo is never enlarged beyond its own pixels (upscaling adds no detail), and tiles are only worth
    their cost when they show the photo at least 1.5x larger than the whole view does.
    """
    long_side = min(grid.long_side, max(width, height))
    if long_side < 1.5 * canvas:
        return []
    factor = long_side / max(width, height)
    scaled_w, scaled_h = max(1, round(width * factor)), max(1, round(height * factor))
    scale_x, scale_y = scaled_w / width, scaled_h / height
    xs = tile_origins(scaled_w, canvas, grid.overlap)
    ys = tile_origins(scaled_h, canvas, grid.overlap)
    views = []
    for row, y in enumerate(ys):
        for col, x in enumerate(xs):
            right, bottom = min(x + canvas, scaled_w), min(y + canvas, scaled_h)
            views.append(
                View(
                    TILE,
                    f"{TILE} {long_side} r{row}c{col}",
                    canvas,
                    (x / scale_x, y / scale_y, right / scale_x, bottom / scale_y),
                    scale_x,
                    scale_y,
                    0,
                    (x > 0, y > 0, right < scaled_w, bottom < scaled_h),
                )
            )
    return views


def upright_views(width: int, height: int, canvas: int, grid: TileGrid | None) -> list[View]:
    """The first request's views: the whole photo, then its tiles (if any)."""
    views = [whole_view(width, height, canvas)]
    if grid is not None:
        views.extend(tile_views(width, height, canvas, grid))
    return views


def sideways_views(width: int, height: int, canvas: int) -> list[View]:
    """The second request's views, for a photo where nothing upright was found: turned 90° and 270°."""
    return [whole_view(width, height, canvas, 90), whole_view(width, height, canvas, 270)]


def render(pixels: Image.Image, width: int, height: int, views: list[View], canvas: int) -> np.ndarray:
    """uint8 [len(views), canvas, canvas, 3]: each view's part of the photo at the top-left, black elsewhere.

    ``pixels`` is the decoded RGB photo, possibly smaller than ``width`` x ``height`` (JPEG draft); views of
    the same rotation and scale (all the tiles) share a single resize of the photo.
    """
    if pixels.mode != "RGB":
        raise ValueError(f"render expects an RGB image, got {pixels.mode}")
    batch = np.zeros((len(views), canvas, canvas, 3), dtype=np.uint8)
    resized: dict[tuple[int, float, float], np.ndarray] = {}
    for index, view in enumerate(views):
        key = (view.rotation, view.scale_x, view.scale_y)
        scaled = resized.get(key)
        if scaled is None:
            turned = pixels
            if view.rotation == 90:
                turned = pixels.transpose(Image.Transpose.ROTATE_90)
            elif view.rotation == 270:
                turned = pixels.transpose(Image.Transpose.ROTATE_270)
            w, h = rotated_size(width, height, view.rotation)
            size = (max(1, round(w * view.scale_x)), max(1, round(h * view.scale_y)))
            if size != turned.size:
                # reducing_gap lets Pillow shrink by an integer factor first (box filter), then finish with an
                # antialiased bilinear pass: same result within a grey level, several times faster on big photos.
                turned = turned.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            scaled = np.asarray(turned)
            resized[key] = scaled
        left, top = round(view.region[0] * view.scale_x), round(view.region[1] * view.scale_y)
        crop = scaled[top : top + canvas, left : left + canvas]
        batch[index, : crop.shape[0], : crop.shape[1]] = crop
    return batch


def to_photo(view: View, rows: np.ndarray, count: int, width: int, height: int, min_confidence: float) -> list[Box]:
    """The model's rows for ``view`` ([confidence, x0, y0, x1, y1], canvas-normalized) as Boxes on the upright photo.

    Boxes are clipped to the part of the photo the view shows (a detection can reach into the black padding)
    and empty ones are dropped.
    """
    table = np.asarray(rows, dtype=np.float32).reshape(-1, 5)[: max(0, int(count))]
    # Canvas-normalized -> pixels of the (turned) photo: times the canvas side, divided by the view's scale.
    per_x, per_y = view.canvas / view.scale_x, view.canvas / view.scale_y
    left, top, right, bottom = view.region
    boxes = []
    for confidence, x0, y0, x1, y1 in table.tolist():
        if not confidence >= min_confidence:  # also drops NaN
            continue
        bx0 = min(max(left + x0 * per_x, left), right)
        by0 = min(max(top + y0 * per_y, top), bottom)
        bx1 = min(max(left + x1 * per_x, left), right)
        by1 = min(max(top + y1 * per_y, top), bottom)
        if bx1 <= bx0 or by1 <= by0:
            continue
        ux0, uy0, ux1, uy1 = unturn((bx0, by0, bx1, by1), view.rotation, width, height)
        boxes.append(Box(ux0, uy0, ux1, uy1, float(confidence), view))
    return boxes


Rect = tuple[float, float, float, float]


def unturn(box: Rect, rotation: int, width: int, height: int) -> Rect:
    """A box on the photo turned by ``rotation`` (counter-clockwise) as one on the upright ``width`` x ``height`` photo.

    Turning 90° counter-clockwise sends the upright point (x, y) to (y, width - x); 270° sends it to
    (height - y, x). These are their inverses.
    """
    x0, y0, x1, y1 = box
    if rotation == 0:
        return box
    if rotation == 90:
        return (width - y1, x0, width - y0, x1)
    if rotation == 270:
        return (y0, height - x1, y1, height - x0)
    raise ValueError(f"rotation must be 0, 90 or 270, got {rotation}")


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer pixels (right/bottom exclusive), covering the float box, clipped to the photo; None if empty."""
    left = min(max(math.floor(box.left + _FLOAT32_SLACK), 0), width)
    top = min(max(math.floor(box.top + _FLOAT32_SLACK), 0), height)
    right = min(max(math.ceil(box.right - _FLOAT32_SLACK), 0), width)
    bottom = min(max(math.ceil(box.bottom - _FLOAT32_SLACK), 0), height)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom
