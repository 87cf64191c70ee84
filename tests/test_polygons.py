"""Masks <-> polygons (ml_backend/masks/polygons.py): parts, holes, specks, borders, the measured default tolerance and
the Label Studio region format."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ml_backend.config import POLYGON_MIN_AREA_PX, POLYGON_TOLERANCE_PX, Settings
from ml_backend.masks.polygons import hole_pixels, mask_to_polygons, polygon_regions, polygons_to_mask
from model.evaluation.datasets import load_dataset

from prerequisites import missing

DEFAULTS = {"tolerance_px": POLYGON_TOLERANCE_PX, "min_area_px": POLYGON_MIN_AREA_PX}


def _disc(height: int, width: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_exact_outline_rasterises_back_to_the_same_pixels():
    mask = _disc(90, 120, (60, 45), 31)
    polygons = mask_to_polygons(mask, tolerance_px=0, min_area_px=1)
    assert len(polygons) == 1
    assert np.array_equal(polygons_to_mask(polygons, 90, 120), mask)


def test_simplification_trades_vertices_for_iou_monotonically():
    mask = _disc(200, 200, (100, 100), 70)
    counts = [len(mask_to_polygons(mask, tolerance_px=t, min_area_px=1)[0]) for t in (0, 0.75, 2, 4)]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0] / 4
    default = mask_to_polygons(mask, **DEFAULTS)
    assert _iou(polygons_to_mask(default, 200, 200), mask) >= 0.98


def test_two_parts_give_two_polygons_largest_first():
    mask = _disc(100, 200, (150, 50), 30) | _disc(100, 200, (40, 50), 15)
    polygons = mask_to_polygons(mask, **DEFAULTS)
    assert len(polygons) == 2
    assert polygons[0][:, 0].min() > 100 and polygons[1][:, 0].max() < 100  # the big disc (right) comes first
    assert _iou(polygons_to_mask(polygons, 100, 200), mask) >= 0.98


def test_ring_loses_its_hole_and_hole_pixels_says_how_much():
    ring = _disc(100, 100, (50, 50), 40) & ~_disc(100, 100, (50, 50), 20)
    polygons = mask_to_polygons(ring, **DEFAULTS)
    assert len(polygons) == 1
    back = polygons_to_mask(polygons, 100, 100)
    filled = _disc(100, 100, (50, 50), 40)
    assert _iou(back, filled) >= 0.98  # the documented choice: holes are filled
    assert back[50, 50]
    assert hole_pixels(ring) == np.count_nonzero(filled & ~ring)
    assert hole_pixels(filled) == 0
    island = ring | _disc(100, 100, (50, 50), 8)  # a part inside the hole: the outer polygon already covers it
    assert len(mask_to_polygons(island, **DEFAULTS)) == 1


def test_specks_below_min_area_and_one_pixel_lines_get_no_polygon():
    mask = _disc(100, 100, (50, 50), 20)
    mask[2:5, 2:5] = True  # 9 px speck
    mask[90, 10:60] = True  # a 1-px line has no area as a polygon
    polygons = mask_to_polygons(mask, tolerance_px=POLYGON_TOLERANCE_PX, min_area_px=16)
    assert len(polygons) == 1
    assert len(mask_to_polygons(mask, tolerance_px=0, min_area_px=9)) == 2  # the speck alone is kept at 9
    assert mask_to_polygons(np.zeros((10, 10), bool), **DEFAULTS) == []


def test_mask_touching_the_border_stays_inside_the_image():
    mask = np.zeros((60, 80), bool)
    mask[0:30, 50:80] = True  # top-right corner
    polygons = mask_to_polygons(mask, **DEFAULTS)
    points = polygons[0]
    assert points[:, 0].min() >= 0 and points[:, 0].max() <= 80 and points[:, 1].min() >= 0
    assert points[:, 1].max() <= 60
    assert np.array_equal(polygons_to_mask(polygons, 60, 80), mask)


def test_default_tolerance_keeps_iou_on_real_training_masks(shared_dir):
    root = shared_dir / "datasets"
    if not (root / "ECSSD").is_dir():
        missing(f"ECSSD not found under {root}")
    dataset = load_dataset("ECSSD:val", root)
    ious = []
    for index in range(0, len(dataset), max(1, len(dataset) // 25)):
        mask = dataset[index].gt == 1
        back = polygons_to_mask(mask_to_polygons(mask, **DEFAULTS), *mask.shape)
        ious.append(_iou(back, mask))
    assert len(ious) >= 20
    assert np.mean(ious) >= 0.98 and np.percentile(ious, 10) >= 0.97


def test_polygon_regions_are_closed_percent_polygons_label_studio_accepts():
    mask = _disc(50, 200, (150, 25), 20) | _disc(50, 200, (30, 25), 10)
    regions = polygon_regions(
        mask=mask, from_name="poly", to_name="image", label="Cat", rotation=0, score=0.9, item_index=None, **DEFAULTS
    )
    assert len(regions) == 2
    for region in regions:
        assert region["type"] == "polygonlabels" and region["from_name"] == "poly" and region["to_name"] == "image"
        assert (region["original_width"], region["original_height"]) == (200, 50)
        assert region["value"]["closed"] is True and region["value"]["polygonlabels"] == ["Cat"]
        assert "item_index" not in region
        points = np.array(region["value"]["points"])
        assert points.shape[1] == 2 and (points >= 0).all() and (points <= 100).all()
    # percent -> pixels gives the mask back
    pixels = [np.array(r["value"]["points"]) / 100 * [200, 50] for r in regions]
    assert _iou(polygons_to_mask(pixels, 50, 200), mask) >= 0.98
    indexed = polygon_regions(
        mask=mask, from_name="p", to_name="i", label="Cat", rotation=90, score=1, item_index=2, **DEFAULTS
    )
    assert {r["item_index"] for r in indexed} == {2} and {r["image_rotation"] for r in indexed} == {90}


def test_polygon_settings_come_from_the_environment_and_refuse_bad_values():
    settings = Settings.from_env({"POLYGON_TOLERANCE_PX": "1.5", "POLYGON_MIN_AREA_PX": "4", "OUTPUT_SHAPE": "Polygon"})
    assert (settings.polygon_tolerance_px, settings.polygon_min_area_px, settings.output_shape) == (1.5, 4, "polygon")
    defaults = Settings.from_env({})
    assert (defaults.polygon_tolerance_px, defaults.output_shape) == (POLYGON_TOLERANCE_PX, "brush")
    for env in ({"POLYGON_TOLERANCE_PX": "-1"}, {"POLYGON_TOLERANCE_PX": "nan"}, {"OUTPUT_SHAPE": "bitmap"}):
        with pytest.raises(ValueError, match=next(iter(env))):
            Settings.from_env(env)
