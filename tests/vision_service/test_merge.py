"""merge.py: thresholds per view kind, faces cut by a tile, parts of a face the whole view found, NMS across views."""

from __future__ import annotations

from vision_service.merge import MergeRules, iou, merge, same_face, touches_inner_edge
from vision_service.views import SIDEWAYS, TILE, TILE_OVERLAP, WHOLE, Box, TileGrid, tile_views, whole_view

THRESHOLDS = {WHOLE: 0.8, TILE: 0.8, SIDEWAYS: 0.9}
# A 3000x2000 photo: tiles of the 900x600 scaled photo, 0.3 canvas px per photo px.
TILES = {v.name: v for v in tile_views(3000, 2000, 300, TileGrid(900, TILE_OVERLAP))}
WHOLE_VIEW = whole_view(3000, 2000, 300)
INNER = TILES["tile 900 r1c1"]  # region (666.7, 500) - (1666.7, 1500), every side inside the photo
CORNER = TILES["tile 900 r0c0"]  # region (0, 0) - (1000, 1000), left and top on the photo's edge


def box(left: float, top: float, right: float, bottom: float, confidence: float = 0.95, view=WHOLE_VIEW) -> Box:
    return Box(left, top, right, bottom, confidence, view)


def test_each_view_kind_has_its_threshold() -> None:
    turned = whole_view(3000, 2000, 300, 90)
    boxes = [
        box(0, 0, 100, 100, 0.85),
        box(900, 900, 1000, 1000, 0.85, INNER),
        box(1000, 1000, 1100, 1100, 0.85, turned),
    ]
    assert [b.view.kind for b in merge(boxes, THRESHOLDS)] == [WHOLE, TILE]
    assert [b.view.kind for b in merge(boxes, {WHOLE: 0.9, TILE: 0.8, SIDEWAYS: 0.8})] == [TILE, SIDEWAYS]


def test_a_face_cut_by_an_inner_tile_border_is_dropped() -> None:
    cut = box(680, 900, 800, 1000, 0.99, INNER)  # its left edge is 13 px (4 canvas px) from the tile's left border
    assert not touches_inner_edge(box(700, 900, 800, 1000, 0.99, INNER))
    assert touches_inner_edge(box(667, 900, 800, 1000, 0.99, INNER))
    assert merge([box(667, 900, 800, 1000, 0.99, INNER)], THRESHOLDS) == []
    assert merge([cut], THRESHOLDS) == [cut]


def test_a_face_on_the_photo_edge_is_kept() -> None:
    # The corner tile's left and top borders are the photo's own: a face there is whole.
    edge = box(0, 0, 120, 150, 0.99, CORNER)
    assert not touches_inner_edge(edge)
    assert merge([edge], THRESHOLDS) == [edge]


def test_whole_view_boxes_never_count_as_cut() -> None:
    assert not touches_inner_edge(box(0, 0, 3000, 2000))


def test_a_tile_seeing_part_of_a_face_the_whole_view_found_is_not_another_face() -> None:
    # A portrait: the whole view finds the face; a tile, up close, finds an eye-and-nose "face" inside it.
    face = box(1000, 700, 1500, 1300, 0.99)
    part = box(1100, 800, 1300, 1000, 0.97, INNER)
    assert merge([face, part], THRESHOLDS) == [face]


def test_the_same_face_from_two_tiles_counts_once_most_confident_first() -> None:
    other = TILES["tile 900 r1c2"]  # overlaps INNER on x 1333..1667
    a = box(1400, 900, 1500, 1010, 0.91, INNER)
    b = box(1405, 895, 1502, 1008, 0.97, other)
    assert merge([a, b], THRESHOLDS) == [b]


def test_separate_faces_stay_separate() -> None:
    faces = [box(100 + 300 * i, 100, 200 + 300 * i, 220, 0.9 + i / 100) for i in range(8)]
    kept = merge(faces, THRESHOLDS)
    assert len(kept) == 8
    assert [b.confidence for b in kept] == sorted((b.confidence for b in faces), reverse=True)


def test_same_face_by_overlap_or_containment() -> None:
    rules = MergeRules()
    assert iou(box(0, 0, 10, 10), box(0, 0, 10, 10)) == 1.0
    assert iou(box(0, 0, 10, 10), box(20, 20, 30, 30)) == 0.0
    assert same_face(box(0, 0, 100, 100), box(10, 10, 110, 110), rules)
    assert same_face(box(0, 0, 100, 100), box(40, 40, 70, 70), rules)  # inside: a part of it
    assert not same_face(box(0, 0, 100, 100), box(90, 0, 190, 100), rules)  # neighbours touching


def test_nothing_in_nothing_out() -> None:
    assert merge([], THRESHOLDS) == []


def test_a_tile_box_too_large_for_a_tile_is_the_whole_views_job() -> None:
    # 700 photo px * 0.3 = 210 canvas px on the tile: a cat's head up close, not a small face.
    large = box(800, 600, 1500, 1300, 0.97, INNER)
    small = box(800, 600, 1100, 900, 0.97, INNER)  # 90 canvas px
    assert merge([large], THRESHOLDS) == []
    assert merge([small], THRESHOLDS) == [small]
    assert merge([large], THRESHOLDS, MergeRules(tile_max_side=None)) == [large]
    whole_large = box(800, 600, 1500, 1300, 0.97)
    assert merge([whole_large], THRESHOLDS) == [whole_large]
