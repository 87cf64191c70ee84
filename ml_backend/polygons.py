"""Masks <-> polygons, for Label Studio's ``PolygonLabels`` and for YOLO / COCO exports.

Conventions (docs/export.md):

* A polygon is an ``(N, 2)`` float array of ``(x, y)`` in continuous image coordinates: pixel ``(row, col)``
  covers ``[col, col + 1) x [row, row + 1)``. Vertices sit on the centres of the part's boundary pixels
  (``x = col + 0.5``), so rasterising by pixel centres (``polygons_to_mask``) gives the mask back exactly at
  tolerance 0.
* One polygon per 8-connected part of at least ``min_area_px`` pixels; smaller specks are dropped.
* Holes are filled: a polygon is its part's outer boundary, because neither Label Studio polygons nor YOLO
  segmentation lines can carry a hole (a ring comes back as a disc). ``hole_pixels`` tells when that happened,
  so the COCO export can keep such a mask as RLE instead.
* Simplification is Douglas-Peucker with ``tolerance_px``: no vertex of the outline is further than that from the
  simplified polygon. The default (``POLYGON_TOLERANCE_PX``) was measured by ``benchmarks/polygon_tolerance.py``.
"""

from __future__ import annotations

import uuid
from typing import Any

import cv2
import numpy as np

_SUBPIXEL_BITS = 8  # cv2.fillPoly fixed-point precision: 1/256 px


def _parts(mask: np.ndarray, min_area_px: int) -> list[np.ndarray]:
    """The 8-connected parts of ``mask`` with at least ``min_area_px`` pixels, each as its own uint8 mask."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [
        (labels == i).astype(np.uint8) for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= max(1, min_area_px)
    ]


def mask_to_polygons(mask: np.ndarray, *, tolerance_px: float, min_area_px: int) -> list[np.ndarray]:
    """One simplified outer polygon per part of ``mask`` (2-D, nonzero = object), largest part first.

    A part whose outline has fewer than 3 distinct vertices (a one-pixel-wide line) has no area as a polygon
    and is left out."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    polygons: list[tuple[int, np.ndarray]] = []
    for part in _parts(mask, min_area_px):
        # CHAIN_APPROX_SIMPLE keeps only the ends of straight runs: still the exact outline.
        contours, _ = cv2.findContours(part, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=len)
        simplified = cv2.approxPolyDP(outline, float(tolerance_px), True) if tolerance_px > 0 else outline
        if len(simplified) < 3:
            # Douglas-Peucker can collapse a thin part to a segment; the exact outline may still be a polygon.
            simplified = outline
        if len(simplified) < 3:
            continue
        points = simplified.reshape(-1, 2).astype(np.float64) + 0.5
        polygons.append((int(part.sum()), points))
    polygons.sort(key=lambda item: -item[0])
    return [points for _, points in polygons]


def polygons_to_mask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise polygons (continuous coordinates) into a bool ``height x width`` mask: a pixel is in when its
    centre is inside or on a polygon. Overlapping polygons are united."""
    canvas = np.zeros((height, width), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    fixed = [np.round((np.asarray(p, np.float64) - 0.5) * scale).astype(np.int32).reshape(-1, 1, 2) for p in polygons]
    for points in fixed:
        if len(points) >= 3:
            cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return canvas.astype(bool)


def hole_pixels(mask: np.ndarray) -> int:
    """How many background pixels are enclosed by the mask (what filling its outer boundaries adds)."""
    binary = mask.astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(binary)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return int(np.count_nonzero(filled & (binary == 0)))


def polygon_regions(
    *,
    mask: np.ndarray,
    from_name: str,
    to_name: str,
    label: str,
    rotation: int,
    score: float,
    tolerance_px: float,
    min_area_px: int,
    item_index: int | None = None,
) -> list[dict[str, Any]]:
    """Label Studio ``polygonlabels`` results for ``mask``: one region per part (holes filled, specks dropped),
    points in percent of the image, largest part first. The counterpart of ``labeling.brush_region``."""
    height, width = mask.shape
    regions = []
    for points in mask_to_polygons(mask, tolerance_px=tolerance_px, min_area_px=min_area_px):
        percent = points / np.array([width, height], np.float64) * 100.0
        region: dict[str, Any] = {
            "id": uuid.uuid4().hex[:10],
            "from_name": from_name,
            "to_name": to_name,
            "type": "polygonlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": int(rotation),
            "value": {
                "points": [[round(float(x), 4), round(float(y), 4)] for x, y in percent],
                "closed": True,
                "polygonlabels": [label],
            },
            "score": float(score),
            "readonly": False,
        }
        if item_index is not None:  # multi-image tasks only
            region["item_index"] = int(item_index)
        regions.append(region)
    return regions
