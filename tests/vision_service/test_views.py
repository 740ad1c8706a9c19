"""views.py: which canvases a photo gets, and every view's boxes back on the upright photo, by hand and by drawing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vision_service.config import MAX_TILE_LONG_SIDE
from vision_service.views import (
    SIDEWAYS,
    TILE,
    TILE_OVERLAP,
    WHOLE,
    TileGrid,
    pixel_box,
    render,
    sideways_views,
    tile_origins,
    tile_views,
    to_photo,
    unturn,
    upright_views,
    whole_view,
)

GRID = TileGrid(900, TILE_OVERLAP)


def rows(*detections: tuple[float, float, float, float, float]) -> np.ndarray:
    table = np.zeros((200, 5), np.float32)
    for i, row in enumerate(detections):
        table[i] = row
    return table


def test_tiles_are_spread_evenly_and_overlap_by_at_least_the_overlap() -> None:
    assert tile_origins(900, 300, 100) == [0, 200, 400, 600]
    assert tile_origins(600, 300, 100) == [0, 150, 300]
    assert tile_origins(450, 300, 100) == [0, 150]
    assert tile_origins(300, 300, 100) == [0]
    assert tile_origins(120, 300, 100) == [0]


def test_a_phone_photo_gets_the_whole_view_and_twelve_tiles_at_900() -> None:
    views = upright_views(3000, 2000, 300, GRID)
    assert [v.kind for v in views] == [WHOLE] + [TILE] * 12
    tile = next(v for v in views if v.name == "tile 900 r1c2")
    # Scaled to 900x600 (0.3 canvas px per photo px); origins x 0/200/400/600, y 0/150/300.
    assert tile.scale_x == pytest.approx(0.3) and tile.scale_y == pytest.approx(0.3)
    assert tile.region == pytest.approx((400 / 0.3, 150 / 0.3, 700 / 0.3, 450 / 0.3))
    assert tile.inner_edges == (True, True, True, True)
    corner = next(v for v in views if v.name == "tile 900 r0c0")
    assert corner.inner_edges == (False, False, True, True)


def test_a_small_photo_gets_the_whole_view_only() -> None:
    # 112x112 (a face crop): enlarging it would add no detail; 400 px is not 1.5x the canvas either.
    assert [v.name for v in upright_views(112, 112, 300, GRID)] == [WHOLE]
    assert [v.name for v in upright_views(400, 300, 300, GRID)] == [WHOLE]
    # A 600 px photo is tiled at its own size, never enlarged to 900.
    assert {v.name.split(" r")[0] for v in tile_views(512, 600, 300, GRID)} == {"tile 600"}


def test_no_grid_means_no_tiles() -> None:
    assert [v.name for v in upright_views(3000, 2000, 300, None)] == [WHOLE]


def test_the_largest_tiling_still_fits_one_request() -> None:
    views = upright_views(5000, 5000, 300, TileGrid(MAX_TILE_LONG_SIDE, TILE_OVERLAP))
    assert len(views) <= 32  # the model's max_batch_size


def test_a_tile_detection_maps_back_by_hand() -> None:
    tile = next(v for v in tile_views(3000, 2000, 300, GRID) if v.name == "tile 900 r1c2")
    (box,) = to_photo(tile, rows((0.9, 0.1, 0.2, 0.3, 0.4)), 1, 3000, 2000, 0.5)
    # Canvas px (30, 60, 90, 120) + tile origin (400, 150) = (430, 210, 490, 270) on the 900x600 photo, / 0.3.
    assert (box.left, box.top, box.right, box.bottom) == pytest.approx((1433.33, 700, 1633.33, 900), abs=0.01)
    assert pixel_box(box, 3000, 2000) == (1433, 700, 1634, 900)
    assert box.view is tile and box.confidence == pytest.approx(0.9)


def test_a_whole_view_detection_maps_back_by_hand() -> None:
    view = whole_view(1200, 600, 300)
    (box,) = to_photo(view, rows((0.9, 0.1, 0.1, 0.3, 0.4)), 1, 1200, 600, 0.5)
    assert pixel_box(box, 1200, 600) == (120, 120, 360, 480)


def test_sideways_detections_map_back_by_hand() -> None:
    # A 400x300 photo turned 90° counter-clockwise is 300x400; its whole view has scale 300/400.
    turned_90, turned_270 = sideways_views(400, 300, 300)
    assert (turned_90.kind, turned_90.name, turned_90.rotation) == (SIDEWAYS, "sideways 90", 90)
    (box,) = to_photo(turned_90, rows((0.9, 0.1, 0.2, 0.3, 0.4)), 1, 400, 300, 0.5)
    # Canvas px (30, 60, 90, 120) / 0.75 = (40, 80, 120, 160) on the turned photo; (x, y) came from (400 - y, x).
    assert pixel_box(box, 400, 300) == (240, 40, 320, 120)
    (box,) = to_photo(turned_270, rows((0.9, 0.1, 0.2, 0.3, 0.4)), 1, 400, 300, 0.5)
    # 270°: (x, y) on the turned photo came from (y, 300 - x).
    assert pixel_box(box, 400, 300) == (80, 180, 160, 260)


def test_unturn_refuses_other_angles() -> None:
    with pytest.raises(ValueError):
        unturn((0, 0, 1, 1), 180, 10, 10)


def test_boxes_are_clipped_to_the_view_and_low_or_empty_ones_dropped() -> None:
    view = whole_view(1200, 600, 300)  # the photo covers canvas-normalized y in [0, 0.5]
    boxes = to_photo(
        view, rows((0.9, 0.1, 0.4, 0.3, 0.9), (0.4, 0.1, 0.1, 0.2, 0.2), (0.9, 0.5, 0.6, 0.7, 0.8)), 3, 1200, 600, 0.5
    )
    assert [pixel_box(b, 1200, 600) for b in boxes] == [(120, 480, 360, 600)]


def _white_box(canvas: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(canvas[:, :, 0] > 127)
    if len(xs) == 0:
        return None
    size = canvas.shape[0]
    return (xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size)


@pytest.mark.parametrize("size", [(3000, 2000), (1200, 1600), (640, 480)])
def test_what_each_view_shows_maps_back_to_where_it_is_on_the_photo(size: tuple[int, int]) -> None:
    """Draw a white square on a black photo, render every view, find the square on each canvas, map it back."""
    width, height = size
    square = (round(width * 0.31), round(height * 0.42), round(width * 0.31) + 60, round(height * 0.42) + 60)
    photo = Image.new("RGB", size)
    ImageDraw.Draw(photo).rectangle((square[0], square[1], square[2] - 1, square[3] - 1), fill=(255, 255, 255))
    views = upright_views(width, height, 300, GRID) + sideways_views(width, height, 300)
    canvases = render(photo, width, height, views, 300)
    assert canvases.shape == (len(views), 300, 300, 3) and canvases.dtype == np.uint8
    seen = 0
    for view, canvas in zip(views, canvases):
        found = _white_box(canvas)
        if found is None:
            continue
        (box,) = to_photo(view, rows((1.0, *found)), 1, width, height, 0.5)
        whole_in_view = view.kind != TILE or not (
            box.left <= view.region[0] + 1 or box.right >= view.region[2] - 1
            or box.top <= view.region[1] + 1 or box.bottom >= view.region[3] - 1
        )  # fmt: skip
        if whole_in_view:
            # Resizing blurs the square's edges by up to a pixel of the view: a few photo pixels.
            tolerance = 1.5 / min(view.scale_x, view.scale_y)
            assert (box.left, box.top, box.right, box.bottom) == pytest.approx(square, abs=tolerance), view.name
            seen += 1
    assert seen >= 4  # the whole view, both sideways views, and at least one tile


def test_render_uses_a_smaller_decoded_photo_for_the_full_size_views() -> None:
    # JPEG draft decodes at 1/2..1/8: views are planned on the full size and drawn from the smaller pixels.
    full = Image.new("RGB", (3000, 2000))
    ImageDraw.Draw(full).rectangle((1500, 1000, 1799, 1299), fill=(255, 255, 255))
    half = full.resize((1500, 1000))
    views = upright_views(3000, 2000, 300, GRID)
    assert np.abs(render(half, 3000, 2000, views, 300).astype(int) - render(full, 3000, 2000, views, 300)).max() <= 128
    # The square at (1500..1800, 1000..1300) is at canvas (150..180, 100..130) in the whole view (scale 0.1).
    assert (render(half, 3000, 2000, views[:1], 300)[0, 102:128, 152:178] > 200).all()


def test_render_refuses_non_rgb() -> None:
    with pytest.raises(ValueError):
        render(Image.new("L", (10, 10)), 10, 10, [whole_view(10, 10, 300)], 300)
