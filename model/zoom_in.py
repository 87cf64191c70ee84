"""Zoom-in: from the second click on, run the network on a crop around the object.

Reproduces the reference evaluation transform (RITM's ``ZoomIn`` with ``skip_clicks=-1``): the first
click sees the whole image; later clicks see the box of the previous mask plus positive clicks,
expanded x1.4 (at least 200 px a side), re-chosen only when needed. ROIs are inclusive
``(rmin, rmax, cmin, cmax)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Click:
    """One user click in image pixels; ``positive`` marks the object, negative the background."""

    row: float
    col: float
    positive: bool = True


def bbox_from_mask(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_bbox(box: Box, ratio: float, min_size: float | None = None) -> Box:
    """Scale a box about its centre, each side at least ``min_size``; Python rounding (half to even)."""
    rmin, rmax, cmin, cmax = box
    rcenter, ccenter = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    height, width = ratio * (rmax - rmin + 1), ratio * (cmax - cmin + 1)
    if min_size is not None:
        height, width = max(height, min_size), max(width, min_size)
    return (
        int(round(rcenter - 0.5 * height)),
        int(round(rcenter + 0.5 * height)),
        int(round(ccenter - 0.5 * width)),
        int(round(ccenter + 0.5 * width)),
    )


def clamp_bbox(box: Box, height: int, width: int) -> Box:
    return max(0, box[0]), min(height - 1, box[1]), max(0, box[2]), min(width - 1, box[3])


def bbox_iou(a: Box, b: Box) -> float:
    """Product of the row and column segment IoUs (the reference's box IoU)."""

    def segment_iou(s: Sequence[int], t: Sequence[int]) -> float:
        inter = max(0, min(s[1], t[1]) - max(s[0], t[0]) + 1)
        union = max(1e-6, max(s[1], t[1]) - min(s[0], t[0]) + 1)
        return inter / union

    return segment_iou(a[:2], b[:2]) * segment_iou(a[2:], b[2:])


def object_roi(mask: np.ndarray, clicks: Sequence[Click], ratio: float, min_size: float) -> Box:
    """Box of ``mask`` united with the positive click pixels, expanded and clamped to the image."""
    mask = mask.copy()
    for click in clicks:
        if click.positive:
            mask[int(click.row), int(click.col)] = True
    height, width = mask.shape
    return clamp_bbox(expand_bbox(bbox_from_mask(mask), ratio, min_size), height, width)


def clicks_inside(roi: Box, clicks: Sequence[Click]) -> bool:
    """Whether every positive click lies in the ROI (a click on its last row/column counts as outside)."""
    return all(roi[0] <= c.row < roi[1] and roi[2] <= c.col < roi[3] for c in clicks if c.positive)


@dataclass
class ZoomIn:
    """Chooses the ROI per click and maps images, clicks and outputs between the image and the crop."""

    target_size: tuple[int, int] = (448, 448)
    expansion_ratio: float = 1.4
    min_crop_size: int = 200
    recompute_iou: float = 0.5
    prob_threshold: float = 0.5

    def next_roi(
        self, current_roi: Box | None, prev_probs: np.ndarray | None, clicks: Sequence[Click], image_hw: tuple[int, int]
    ) -> tuple[Box, bool]:
        """ROI for the network call after ``clicks``; returns ``(roi, changed)``."""
        candidate = None
        if prev_probs is not None:
            mask = prev_probs > self.prob_threshold
            if mask.any():
                candidate = object_roi(mask, clicks, self.expansion_ratio, self.min_crop_size)
        if candidate is None:
            candidate = (0, image_hw[0] - 1, 0, image_hw[1] - 1)
        if (
            current_roi is None
            or not clicks_inside(current_roi, clicks)
            or bbox_iou(candidate, current_roi) < self.recompute_iou
        ):
            return candidate, True
        return current_roi, False

    def crop(self, image_nd: torch.Tensor, roi: Box) -> torch.Tensor:
        """(B, C, H, W) -> the ROI resized to ``target_size`` (bilinear, align_corners=True)."""
        rmin, rmax, cmin, cmax = roi
        with torch.no_grad():
            patch = image_nd[:, :, rmin : rmax + 1, cmin : cmax + 1]
            return F.interpolate(patch, size=self.target_size, mode="bilinear", align_corners=True)

    def transform_clicks(self, clicks: Sequence[Click], roi: Box) -> list[Click]:
        rmin, rmax, cmin, cmax = roi
        height, width = self.target_size
        return [
            Click(height * (c.row - rmin) / (rmax - rmin + 1), width * (c.col - cmin) / (cmax - cmin + 1), c.positive)
            for c in clicks
        ]

    def paste(self, prob_map: torch.Tensor, roi: Box, image_hw: tuple[int, int]) -> torch.Tensor:
        """Resize the crop's map (B, 1, h, w) back to the ROI and paste it into a zero full-size canvas."""
        rmin, rmax, cmin, cmax = roi
        resized = F.interpolate(prob_map, size=(rmax - rmin + 1, cmax - cmin + 1), mode="bilinear", align_corners=True)
        return place_on_zeros(resized, roi, image_hw)


def place_on_zeros(patch: torch.Tensor, roi: Box, image_hw: tuple[int, int]) -> torch.Tensor:
    """A full-size (B, C, H, W) canvas holding ``patch`` on ``roi`` and zeros elsewhere; only the outside is zeroed
    (at 2 MP a zero fill of the whole canvas costs as much as the copy)."""
    rmin, rmax, cmin, cmax = roi
    canvas = patch.new_empty((*patch.shape[:2], *image_hw))
    canvas[:, :, :rmin].zero_()
    canvas[:, :, rmax + 1 :].zero_()
    canvas[:, :, rmin : rmax + 1, :cmin].zero_()
    canvas[:, :, rmin : rmax + 1, cmax + 1 :].zero_()
    canvas[:, :, rmin : rmax + 1, cmin : cmax + 1] = patch
    return canvas
