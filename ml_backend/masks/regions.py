"""One annotated region as a mask: what every platform's reader produces and every consumer (the export, the
fine-tuning job, a click that continues a saved region) takes.

The platform readers (``ml_backend.labelstudio.regions`` for brush RLE and percent polygons,
``ml_backend.cvat.annotations`` for CVAT's box RLE and pixel polygons) parse their own formats and build regions
here only, so a polygon is validated and rasterised the same way (``polygons_to_mask``, pixel centres) whichever
platform drew it. A region is untrusted input: each malformed field gets a ``RegionError`` naming it and where it
was found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .polygons import polygons_to_mask

__all__ = ["MaskRegion", "RegionError", "check_dimension", "mask_region", "polygon_region"]


class RegionError(ValueError):
    """A region that cannot be read; the message names the field and where it was."""


@dataclasses.dataclass(frozen=True)
class MaskRegion:
    """One mask or polygon region, in pixels of the image it was drawn on."""

    label: str
    kind: str  # "brush" (a painted mask, holes kept) | "polygon"
    width: int
    height: int
    mask: np.ndarray  # (height, width) bool, as annotated
    points: np.ndarray | None  # a polygon's (N, 2) x, y vertices in pixels; None for a painted mask

    def mask_at(self, height: int, width: int) -> np.ndarray:
        """The mask on the image as decoded here, when its size differs from the one the editor reported (EXIF
        rotation, a rescaled file): nearest-neighbour, so it stays a bool mask."""
        if self.mask.shape == (height, width):
            return self.mask
        import cv2

        return cv2.resize(self.mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).view(bool)


def check_dimension(value: Any, where: str) -> int:
    """An image side: a positive integer (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RegionError(f"{where} must be a positive integer, got {str(value)[:40]}")
    return value


def polygon_region(label: str, points: Any, width: int, height: int, where: str, field: str) -> MaskRegion:
    """A polygon given as (x, y) pixel vertices: at least 3 finite pairs, clipped to the image, rasterised by pixel
    centres. ``field`` names the vertices in the platform's format for the error message."""
    if not isinstance(points, np.ndarray):
        pairs = isinstance(points, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(c) for c in p) for p in points
        )
        try:
            points = np.asarray(points if pairs else [], np.float64)
        except OverflowError:  # an integer beyond float range: JSON parsers here bound them, this is the backstop
            points = np.asarray([], np.float64)
    array = points.astype(np.float64, copy=False)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 3 or not np.isfinite(array).all():
        raise RegionError(f"{where}: {field} must be at least 3 [x, y] pairs of finite numbers")
    array = np.clip(array, 0.0, np.array([width, height], np.float64))
    return MaskRegion(label, "polygon", width, height, polygons_to_mask([array], height, width), array)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mask_region(label: str, mask: np.ndarray) -> MaskRegion:
    """A painted mask (bool, image-sized; holes and parts kept)."""
    height, width = mask.shape
    return MaskRegion(label, "brush", int(width), int(height), mask.astype(bool, copy=False), None)
