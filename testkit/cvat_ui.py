"""What CVAT's browser code does with an interactor's reply, by its rules (cvat-core ``rle-utils.ts`` and
``opencv-interface.ts``, cvat-ui ``tools-control.tsx``, v2.73.0), for the CVAT tests and the real-CVAT drive: the
mask a shape decodes to, the polygon "Convert masks to polygons" keeps of it, and what the confidence slider hides."""

from __future__ import annotations

import cv2
import numpy as np

SLIDER_DEFAULT = 0.5  # tools-control.tsx: thresholdValue's initial value


def decode_cvat_mask(points: list, height: int, width: int) -> np.ndarray:
    """A mask from CVAT's ``points``, by cvat-core's rules: integers, run lengths over the inclusive bounding box
    ``left..right`` x ``top..bottom`` starting with a run of zeros, then the four bounds; fewer than 6 numbers is
    an empty mask. Strict: a float, a negative run or a length that does not fill the box fails the test."""
    mask = np.zeros((height, width), bool)
    if len(points) < 6:
        return mask
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in points), "CVAT reads integers only"
    *runs, left, top, right, bottom = points
    assert 0 <= left <= right < width and 0 <= top <= bottom < height
    assert all(r >= 0 for r in runs)
    box_w, box_h = right - left + 1, bottom - top + 1
    assert sum(runs) == box_w * box_h, "the runs must cover the bounding box exactly"
    flat = np.zeros(box_w * box_h, bool)
    pos, value = 0, False
    for run in runs:
        flat[pos : pos + run] = value
        pos += run
        value = not value
    mask[top : bottom + 1, left : right + 1] = flat.reshape(box_h, box_w)
    return mask


def shape_confidence(shape: dict) -> float:
    """The confidence CVAT's UI reads: the attribute with ``spec_id`` 0 (a string), else 1."""
    for attribute in shape.get("attributes", []):
        if attribute["spec_id"] == 0:
            assert isinstance(attribute["value"], str), "CVAT reads the confidence as a string"
            return float(attribute["value"])
    return 1.0


def outlines(part: np.ndarray) -> list[np.ndarray]:
    """cvat-core's findContours: a 1-px border, a 2x2 dilation, external contours, longest first."""
    expanded = cv2.copyMakeBorder(part.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    expanded = cv2.dilate(expanded, np.ones((2, 2), np.uint8), anchor=(-1, -1), borderValue=0)
    contours, _ = cv2.findContours(expanded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contours = [c.reshape(-1, 2) - 1 for c in contours]

    def pixel_length(c: np.ndarray) -> float:
        steps = np.diff(np.vstack([c[:1] - 1, c]), axis=0)  # CVAT starts from (x0 - 1, y0 - 1)
        return float(np.hypot(steps[:, 0], steps[:, 1]).sum())

    return sorted(contours, key=pixel_length, reverse=True)


def polygon_mode_mask(shape_mask: np.ndarray) -> np.ndarray:
    """What "Convert masks to polygons" keeps of one mask shape: its longest outline, filled (no approximation)."""
    found = outlines(shape_mask)
    out = np.zeros(shape_mask.shape, np.uint8)
    if found and len(found[0]) >= 3:
        cv2.fillPoly(out, [found[0].astype(np.int32)], 1)
    return out.astype(bool)


def ui_objects(reply: dict, height: int, width: int, polygons: bool, slider: float = SLIDER_DEFAULT) -> list:
    """The objects "Done" creates from a reply: one per ``mask`` shape at or above the slider (and, in polygon
    mode, with an outline of at least 3 points), as bool masks in the frame's pixels."""
    objects = []
    for shape in reply["shapes"]:
        if shape["type"] != "mask":
            continue
        mask = decode_cvat_mask(shape["points"], height, width)
        if not mask.any() or shape_confidence(shape) < slider:
            continue
        objects.append(polygon_mode_mask(mask) if polygons else mask)
    return objects
