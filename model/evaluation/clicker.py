"""Robot user of the standard NoC protocol: each click goes to the centre of the largest error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

IGNORE_LABEL = -1


@dataclass(frozen=True)
class Click:
    """One click in image pixel coordinates; `index` is its 0-based position in the session."""

    row: int
    col: int
    is_positive: bool
    index: int = 0

    def as_list(self) -> list:
        return [self.row, self.col, self.is_positive]


def _distance_inside(region: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each region pixel to the nearest pixel outside it.

    The region is padded with one pixel of background, so the image border counts as outside.
    """
    padded = np.pad(region.astype(np.uint8), 1, mode="constant")
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance[1:-1, 1:-1]


def error_distance_maps(
    gt: np.ndarray, pred_mask: np.ndarray, ignore_label: int = IGNORE_LABEL
) -> tuple[np.ndarray, np.ndarray]:
    """Distance maps of the false-negative and false-positive regions (ignore pixels excluded)."""
    object_mask = gt == 1
    valid = gt != ignore_label
    pred_mask = np.asarray(pred_mask, dtype=bool)
    false_negative = object_mask & ~pred_mask & valid
    false_positive = ~object_mask & pred_mask & valid
    return _distance_inside(false_negative), _distance_inside(false_positive)


def next_click(
    gt: np.ndarray,
    pred_mask: np.ndarray,
    not_clicked: np.ndarray | None = None,
    ignore_label: int = IGNORE_LABEL,
) -> tuple[int, int, bool]:
    """Return `(row, col, is_positive)` of the next robot click.

    The false-negative side wins only when its largest distance is strictly larger; ties and the
    no-error case give a negative click. The click lands on the first pixel in row-major order
    that attains the chosen map's maximum, which is (0, 0) when there is no error at all.
    """
    fn_distance, fp_distance = error_distance_maps(gt, pred_mask, ignore_label)
    if not_clicked is not None:
        fn_distance = fn_distance * not_clicked
        fp_distance = fp_distance * not_clicked
    is_positive = bool(fn_distance.max() > fp_distance.max())
    chosen = fn_distance if is_positive else fp_distance
    row, col = np.unravel_index(int(np.argmax(chosen)), chosen.shape)
    return int(row), int(col), is_positive


class Clicker:
    """Stateful robot user for one instance; never clicks the same pixel twice unless forced."""

    def __init__(
        self,
        gt: np.ndarray,
        init_clicks: Iterable[tuple[int, int, bool]] = (),
        ignore_label: int = IGNORE_LABEL,
    ) -> None:
        self.gt = np.asarray(gt)
        if self.gt.ndim != 2:
            raise ValueError(f"gt must be a 2-D label map, got shape {self.gt.shape}")
        self.ignore_label = ignore_label
        self.not_clicked = np.ones(self.gt.shape, dtype=bool)
        self.clicks: list[Click] = []
        for row, col, is_positive in init_clicks:
            self.add_click(row, col, is_positive)

    def add_click(self, row: int, col: int, is_positive: bool) -> Click:
        click = Click(int(row), int(col), bool(is_positive), len(self.clicks))
        self.clicks.append(click)
        self.not_clicked[click.row, click.col] = False
        return click

    def make_next_click(self, pred_mask: np.ndarray) -> Click:
        """Choose, record and return the click that corrects `pred_mask` (boolean HxW)."""
        pred_mask = np.asarray(pred_mask)
        if pred_mask.shape != self.gt.shape:
            raise ValueError(f"pred_mask shape {pred_mask.shape} != gt shape {self.gt.shape}")
        row, col, is_positive = next_click(self.gt, pred_mask, self.not_clicked, self.ignore_label)
        return self.add_click(row, col, is_positive)

    @property
    def num_positive(self) -> int:
        return sum(click.is_positive for click in self.clicks)

    @property
    def num_negative(self) -> int:
        return len(self.clicks) - self.num_positive

    def __len__(self) -> int:
        return len(self.clicks)
