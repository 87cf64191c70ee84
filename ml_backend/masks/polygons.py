"""Masks <-> polygons, for Label Studio's ``PolygonLabels`` and for YOLO / COCO exports.

Conventions (docs/export.md):

* A polygon is an ``(N, 2)`` float array of ``(x, y)`` in continuous image coordinates: pixel ``(row, col)``
  covers ``[col, col + 1) x [row, row + 1)``, as Label Studio (percent of the image) and COCO read them. The
  outline runs along the outer edges of the boundary pixels (the centre-line contour moved out by half a pixel),
  so the polygon's area is the mask's: a centre-line polygon would shrink every object by half a pixel all round
  in those readers. Rasterising by pixel centres (``polygons_to_mask``) gives the mask back at tolerance 0.
* One polygon per 8-connected part whose filled outline covers at least ``min_area_px`` pixels; smaller specks
  are dropped.
* Holes are filled: a polygon is its part's outer boundary, because neither Label Studio polygons nor YOLO
  segmentation lines can carry a hole (a ring comes back as a disc). ``hole_pixels`` tells when that happened,
  so the COCO export can keep such a mask as RLE instead.
* Simplification is Douglas-Peucker with ``tolerance_px``: no vertex of the outline is further than that from the
  simplified polygon. The default (``POLYGON_TOLERANCE_PX``) was measured by ``benchmarks/polygon_tolerance.py``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import cv2
import numpy as np

log = logging.getLogger("adaptiveclick.backend")
MAX_POLYGON_PARTS = 100  # polygon regions in one answer, largest first (docs/security.md)
_BLOCK_PIXELS = 1 << 20  # rasterisation works on blocks of rows of about this many pixels


def _filled_pixels(outline: np.ndarray) -> int:
    """Pixels inside a centre-line contour, its own boundary pixels included (Pick's theorem: area + steps / 2 + 1);
    exact for a part without one-pixel-wide necks, which the contour walks twice."""
    points = outline.reshape(-1, 2)
    steps = int(np.abs(np.roll(points, -1, axis=0) - points).max(axis=1).sum())
    return round(abs(cv2.contourArea(outline)) + steps / 2 + 1)


def mask_to_polygons(
    mask: np.ndarray, *, tolerance_px: float, min_area_px: int, max_parts: int | None = None
) -> list[np.ndarray]:
    """One simplified outer polygon per 8-connected part of ``mask`` (2-D, nonzero = object) whose filled
    outline covers at least ``min_area_px`` pixels, largest first.

    A part inside another part's hole is covered by that part's polygon and gets none of its own. A part whose
    outline has fewer than 3 distinct vertices (a straight one-pixel-wide line) has no area as a polygon and is
    left out. ``max_parts``: only that many of the largest outlines (by their contour area, a few times over for
    the exact filter below) are simplified, so a fragmented mask costs what its largest parts cost."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    # Outer contours only, one pass over the image: OpenCV's border following treats the object as 8-connected.
    # CHAIN_APPROX_SIMPLE keeps only the ends of straight runs: still the exact outline.
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if max_parts is not None and len(contours) > 4 * max_parts:
        rough = np.fromiter((cv2.contourArea(c) for c in contours), np.float64, len(contours))
        contours = [contours[i] for i in np.argsort(-rough, kind="stable")[: 4 * max_parts]]
    size = np.array([mask.shape[1], mask.shape[0]], np.float64)
    polygons: list[tuple[int, np.ndarray]] = []
    for outline in contours:
        area = _filled_pixels(outline)
        if area < max(1, min_area_px):
            continue
        simplified = cv2.approxPolyDP(outline, float(tolerance_px), True) if tolerance_px > 0 else outline
        if len(simplified) < 3:
            # Douglas-Peucker can collapse a thin part to a segment; the exact outline may still be a polygon.
            simplified = outline
        if len(simplified) < 3:
            continue
        centres = simplified.reshape(-1, 2).astype(np.float64) + 0.5
        polygons.append((area, np.clip(_grow(centres, 0.5), 0.0, size)))
    polygons.sort(key=lambda item: -item[0])
    return [points for _, points in polygons]


def _grow(points: np.ndarray, distance: float) -> np.ndarray:
    """Move every edge of a closed polygon ``distance`` outwards; vertices where the moved edges meet (mitred).

    A right-angle corner moves by ``distance`` along both axes, so a centre-line contour lands on the pixel edges;
    at a turn sharper than 120 degrees (a spike) the mitre is capped at twice ``distance``."""
    edges = np.roll(points, -1, axis=0) - points
    lengths = np.maximum(np.hypot(edges[:, 0], edges[:, 1]), 1e-12)
    x, y = points[:, 0], points[:, 1]
    signed_area = float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    # With y pointing down, a positive shoelace sum means clockwise on screen: outside is left of each edge.
    side = 1.0 if signed_area > 0 else -1.0
    normals = side * np.stack([edges[:, 1], -edges[:, 0]], axis=1) / lengths[:, None]
    before, after = np.roll(normals, 1, axis=0), normals
    cosine = np.sum(before * after, axis=1, keepdims=True)
    return points + distance * (before + after) / np.maximum(1.0 + cosine, 0.5)


def polygons_to_mask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise polygons (continuous coordinates) into a bool ``height x width`` mask: a pixel is in when its
    centre is inside a polygon (even-odd rule per polygon; polygons are united).

    Exact scanlines rather than ``cv2.fillPoly``, which also paints every pixel an edge passes through and so
    grows a polygon by up to a pixel."""
    mask = np.zeros((height, width), bool)
    for polygon in polygons:
        points = np.asarray(polygon, np.float64).reshape(-1, 2)
        if len(points) >= 3:
            mask |= _scanline_fill(points, height, width)
    return mask


def _scanline_fill(points: np.ndarray, height: int, width: int) -> np.ndarray:
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # Row r's centre line y = r + 0.5 crosses an edge when it lies in [min y, max y) (half-open: a vertex counts once).
    first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    last = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
    counts = np.maximum(last - first, 0)
    edge = np.repeat(np.arange(len(points)), counts)
    rows = np.repeat(first, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    centre_y = rows + 0.5
    xs = x0[edge] + (centre_y - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order].reshape(-1, 2), xs[order].reshape(-1, 2)  # crossings pair up within each row
    # Pixel c is in a span [a, b) when its centre c + 0.5 is: c from ceil(a - 0.5) to ceil(b - 0.5) - 1.
    starts = np.clip(np.ceil(xs[:, 0] - 0.5), 0, width).astype(np.int64)
    stops = np.clip(np.ceil(xs[:, 1] - 0.5), 0, width).astype(np.int64)
    # Spans to pixels by blocks of about a million pixels, over the rows the polygon spans only: a full-frame
    # int32/int64 coverage array cost ~1.2 GB at 64 MP (benchmarks/hostile_inputs.py).
    mask = np.zeros((height, width), bool)
    span_rows = rows[:, 0]
    if not span_rows.size:
        return mask
    step = max(1, _BLOCK_PIXELS // (width + 1))
    for top in range(int(span_rows[0]), int(span_rows[-1]) + 1, step):
        lo, hi = np.searchsorted(span_rows, [top, top + step])
        if lo == hi:
            continue
        coverage = np.zeros((min(step, height - top), width + 1), np.int32)
        np.add.at(coverage, (span_rows[lo:hi] - top, starts[lo:hi]), 1)
        np.add.at(coverage, (span_rows[lo:hi] - top, stops[lo:hi]), -1)
        mask[top : top + coverage.shape[0]] = np.cumsum(coverage, axis=1, dtype=np.int32)[:, :width] > 0
    return mask


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
    max_parts: int = MAX_POLYGON_PARTS,
) -> list[dict[str, Any]]:
    """Label Studio ``polygonlabels`` results for ``mask``: one region per part (holes filled, specks dropped),
    points in percent of the image, largest part first, at most ``max_parts`` of them (the rest is logged). The
    counterpart of ``labeling.brush_region``."""
    height, width = mask.shape
    regions = []
    parts = mask_to_polygons(mask, tolerance_px=tolerance_px, min_area_px=min_area_px, max_parts=max_parts + 1)
    if len(parts) > max_parts:  # a fragmented mask: a reply of a million regions helps no annotator
        log.warning(
            "the mask has more than %d parts: answering the %d largest (MAX_POLYGON_PARTS)", max_parts, max_parts
        )
        parts = parts[:max_parts]
    for points in parts:
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
