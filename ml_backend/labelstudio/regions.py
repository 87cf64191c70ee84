"""Label Studio's mask results as masks: ``brushlabels`` (the editor's RLE) and ``polygonlabels`` (vertices in
percent of the image). The one reader of both that the export command and the fine-tuning job share, so an
annotation gives the same mask whether it is exported or trained on.

A brush pixel is in the mask when its alpha is above half (the editor paints 255); a polygon is closed and
rasterised with ``ml_backend.masks.polygons.polygons_to_mask``. Both become regions through
``ml_backend.masks.regions``, as CVAT's masks and polygons do (``ml_backend.cvat.annotations``). A result is
untrusted input: each malformed field gets a ``RegionError`` naming it and where it was found, and nothing is
allocated at a size the result claims before the claim is checked (the pixel limit, the sizes the caller allows,
a brush RLE's header against width x height x 4).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from ..masks.regions import MaskRegion, RegionError, check_dimension, mask_region, polygon_region
from ..masks.rle import RLEError, decode_rle, rle_header

MASK_RESULT_TYPES = ("brushlabels", "polygonlabels")

__all__ = ["MASK_RESULT_TYPES", "MaskRegion", "RegionError", "read_region"]


def read_region(
    result: dict[str, Any],
    where: str,
    max_pixels: int | None = None,
    sizes: Collection[tuple[int, int]] | None = None,
) -> MaskRegion:
    """The mask of a ``brushlabels`` or ``polygonlabels`` result; ``max_pixels`` caps the image it claims, and
    ``sizes`` (``(width, height)`` pairs) the sizes it may claim: a region drawn on an image of another size is
    refused before anything is rasterised (a few bytes of JSON can claim any size)."""
    rtype = str(result.get("type", "")).lower()
    if rtype not in MASK_RESULT_TYPES:
        raise RegionError(f"{where}: type {rtype or None!r} is not one of {', '.join(MASK_RESULT_TYPES)}")
    value = result.get("value")
    if not isinstance(value, dict):
        raise RegionError(f"{where}: 'value' must be an object")
    labels = value.get(rtype)
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
        raise RegionError(f"{where}: value.{rtype} must be a list with the region's label")
    width, height = (check_dimension(result.get(k), f"{where}.{k}") for k in ("original_width", "original_height"))
    if max_pixels is not None and width * height > max_pixels:
        raise RegionError(f"{where}: a {width}x{height} image is above the limit (MAX_IMAGE_MEGAPIXELS)")
    if sizes is not None and (width, height) not in sizes:
        shown = " or ".join(f"{w}x{h}" for w, h in sizes)
        raise RegionError(f"{where}: drawn on a {width}x{height} image, not this one ({shown})")
    if rtype == "brushlabels":
        return mask_region(labels[0], _brush_mask(value, width, height, where))
    points = _polygon_points(value.get("points"), width, height, where)
    return polygon_region(labels[0], points, width, height, where, "value.points")


def _brush_mask(value: dict, width: int, height: int, where: str) -> np.ndarray:
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise RegionError(f"{where}: a brush result needs value.format 'rle' and a non-empty value.rle list")
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in rle):
        raise RegionError(f"{where}: value.rle must be a list of bytes (integers 0..255)")
    try:  # the header is checked against width x height x 4 before anything is allocated (an RLE bomb)
        claimed = rle_header(rle)[0]
        if claimed != width * height * 4:
            raise RegionError(
                f"{where}: value.rle holds {claimed // 4} pixels, but original_width x original_height is "
                f"{width}x{height} = {width * height}"
            )
        rgba = decode_rle(rle, width * height * 4)
    except RLEError as exc:
        raise RegionError(f"{where}: value.rle is not a valid brush RLE: it {exc}") from None
    return rgba.reshape(height, width, 4)[..., 3] > 127


def _polygon_points(points: Any, width: int, height: int, where: str) -> np.ndarray:
    ok = isinstance(points, list) and len(points) >= 3
    ok = ok and all(isinstance(p, list) and len(p) == 2 for p in points)
    ok = ok and all(isinstance(c, (int, float)) and not isinstance(c, bool) for p in points for c in p)
    try:
        array = np.asarray(points, np.float64) if ok else None
    except OverflowError:  # an integer beyond float range (callers' JSON parser bounds them; this is the backstop)
        array = None
    if array is None or not np.isfinite(array).all():
        raise RegionError(f"{where}: value.points must be at least 3 [x, y] pairs of finite numbers (percent)")
    return np.clip(array, 0.0, 100.0) / 100.0 * np.array([width, height], np.float64)
