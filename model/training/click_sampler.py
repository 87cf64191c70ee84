"""Click simulation for training.

Two parts, as in the reference (RITM's ``MultiPointSampler`` and the trainer's ``get_next_points``):

* :class:`MultiPointSampler` draws the *initial* clicks of a training sample: up to ``max_num_points``
  positives inside the (usually eroded) object and up to as many negatives from the background, from
  other objects or from a band around the object. Click counts follow a geometric law
  (``prob_gamma``), so most samples have few clicks.
* :func:`add_error_clicks` is one *iterative-training* round: for each batch element one click in the
  larger error region of the current prediction, at a random pixel deeper than half that region's
  largest distance to its boundary.

Clicks use the network's layout: an array (2N, 3) of (row, col, index) with N positive rows then N
negative rows, padding rows = -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import torch

NEGATIVE_STRATEGIES = ("bg", "other", "border")


@cache
def geometric_probs(count: int, gamma: float) -> np.ndarray:
    """``p[k] ~ gamma**k`` for k in 0..count-1, normalised."""
    probs = gamma ** np.arange(count, dtype=np.float64)
    return probs / probs.sum()


def empty_points(max_num_points: int) -> np.ndarray:
    """A (2N, 3) float32 click array holding only padding."""
    return np.full((2 * max_num_points, 3), -1.0, dtype=np.float32)


def erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary erosion with a 3x3 kernel (pixels outside the image count as background)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=iterations)
    return eroded[1:-1, 1:-1].astype(bool)


def border_band(mask: np.ndarray, expand_ratio: float) -> np.ndarray:
    """Pixels within ``ceil(expand_ratio * sqrt(area))`` dilation steps of ``mask`` but outside it."""
    radius = int(np.ceil(expand_ratio * np.sqrt(mask.sum())))
    if radius <= 0:
        return np.zeros_like(mask, dtype=bool)
    dilated = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=radius).astype(bool)
    return dilated & ~mask


@dataclass
class MultiPointSampler:
    """Initial clicks for one training sample (reference defaults: 24 points, gamma 0.8).

    Args:
        max_num_points: N, the number of positive (and of negative) rows of the click array.
        prob_gamma: the number of positives is ``1 + k`` and of negatives ``k`` with ``P(k) ~ gamma**k``.
        expand_ratio: width of the "border" negative band relative to ``sqrt(object area)``.
        positive_erode_prob, positive_erode_iters: positives are drawn from the object eroded this
            many 3x3 steps with this probability (kept un-eroded when fewer than 10 pixels remain).
        negative_probs: probabilities of drawing a negative from the background, from other
            objects, or from the border band.
    """

    max_num_points: int = 24
    prob_gamma: float = 0.8
    expand_ratio: float = 0.1
    positive_erode_prob: float = 0.9
    positive_erode_iters: int = 3
    negative_probs: tuple[float, float, float] = (0.1, 0.4, 0.5)

    def __post_init__(self) -> None:
        if self.max_num_points < 1:
            raise ValueError("max_num_points must be at least 1")
        if not np.isclose(sum(self.negative_probs), 1.0):
            raise ValueError(f"negative_probs must sum to 1, got {self.negative_probs}")

    def positive_region(self, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Where positives for ``part`` may go: usually the eroded part."""
        if rng.random() >= self.positive_erode_prob:
            return part
        eroded = erode(part, self.positive_erode_iters)
        return eroded if eroded.sum() > 10 else part

    def sample(
        self,
        parts: list[np.ndarray],
        others: np.ndarray,
        valid: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Draw the initial clicks.

        Args:
            parts: boolean masks of the selected object(s); merged objects give several parts, and
                every part gets at least one positive click. The target is their union.
            others: boolean mask of the other annotated objects (source of "other" negatives).
            valid: boolean mask of pixels that may be clicked (not ignore, not padding).
            rng: the sample's random generator.

        Returns:
            (2N, 3) float32 click array.
        """
        n = self.max_num_points
        target = np.logical_or.reduce(parts)
        positive_regions = [np.argwhere(self.positive_region(p, rng) & valid) for p in parts]
        positive_regions = [r for r in positive_regions if len(r)] or [np.argwhere(target & valid)]
        points = empty_points(n)
        positives = self._positive_clicks(positive_regions, rng)
        negatives = self._negative_clicks(target, others, valid, rng)
        for i, (row, col) in enumerate(positives):
            points[i] = (row, col, i)
        for j, (row, col) in enumerate(negatives):
            points[n + j] = (row, col, len(positives) + j)
        return points

    def _positive_clicks(self, regions: list[np.ndarray], rng: np.random.Generator) -> list[tuple[int, int]]:
        regions = [r for r in regions if len(r)]
        if not regions:
            return []
        n = self.max_num_points
        count = 1 + int(rng.choice(n, p=geometric_probs(n, self.prob_gamma)))
        if len(regions) == 1:
            return [tuple(regions[0][rng.integers(len(regions[0]))]) for _ in range(count)]
        # Merged objects: one click in every part first, then extra clicks in random parts.
        clicks = [tuple(r[rng.integers(len(r))]) for r in regions[:n]]
        extra = int(rng.choice(n + 1, p=geometric_probs(n + 1, self.prob_gamma)))
        for _ in range(min(extra, n - len(clicks))):
            region = regions[rng.integers(len(regions))]
            clicks.append(tuple(region[rng.integers(len(region))]))
        return clicks

    def _negative_clicks(
        self, target: np.ndarray, others: np.ndarray, valid: np.ndarray, rng: np.random.Generator
    ) -> list[tuple[int, int]]:
        n = self.max_num_points
        count = int(rng.choice(n + 1, p=geometric_probs(n + 1, self.prob_gamma)))
        if count == 0:
            return []
        background = ~target & valid
        other = others & ~target & valid
        if not other.any():
            other = background
        regions = {
            "bg": np.argwhere(background),
            "other": np.argwhere(other),
            "border": np.argwhere(border_band(target, self.expand_ratio) & valid),
        }
        clicks = []
        for _ in range(count):
            strategy = NEGATIVE_STRATEGIES[rng.choice(3, p=self.negative_probs)]
            region = regions[strategy]
            if len(region):
                clicks.append(tuple(region[rng.integers(len(region))]))
        return clicks


# ---------------------------------------------------------------------------------------------
# Iterative training


def _inner_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest non-region pixel (image border counts as outside)."""
    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


def error_click(
    prob: np.ndarray, gt: np.ndarray, valid: np.ndarray, rng: np.random.Generator, threshold: float = 0.49
) -> tuple[int, int, bool] | None:
    """One corrective click ``(row, col, positive)`` for a predicted probability map, or ``None``.

    The click goes into the larger error region (false negatives win only when strictly deeper), at a
    random pixel whose distance to the region's boundary exceeds half of the larger maximum distance.
    Pixels outside ``valid`` (ignore) are never errors.
    """
    false_negative = gt & (prob < threshold) & valid
    false_positive = ~gt & (prob > threshold) & valid
    fn_dist = _inner_distance(false_negative)
    fp_dist = _inner_distance(false_positive)
    fn_max, fp_max = float(fn_dist.max()), float(fp_dist.max())
    positive = fn_max > fp_max
    distance = fn_dist if positive else fp_dist
    candidates = np.argwhere(distance > max(fn_max, fp_max) / 2.0)
    if len(candidates) == 0:
        return None
    row, col = candidates[rng.integers(len(candidates))]
    return int(row), int(col), bool(positive)


def insert_click(points: np.ndarray | torch.Tensor, row: int, col: int, positive: bool, index: int) -> None:
    """Write a click into the first padding row of its kind (the last row of that kind when full), in place."""
    n = points.shape[0] // 2
    start = 0 if positive else n
    rows = points[start : start + n, 0]
    free = (rows < 0).nonzero()
    free = free[0] if isinstance(free, tuple) else free[:, 0]
    slot = start + (int(free[0]) if len(free) else n - 1)
    points[slot, 0], points[slot, 1], points[slot, 2] = row, col, index


def add_error_clicks(
    probs: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    points: torch.Tensor,
    rng: np.random.Generator,
    click_index: int,
    threshold: float = 0.49,
) -> torch.Tensor:
    """One iterative-training round on a batch: a new click per element from its prediction error.

    Args:
        probs: (B, 1, H, W) predicted probabilities.
        gt: (B, 1, H, W) target (> 0.5 = object).
        valid: (B, 1, H, W) pixels that count (not ignore).
        points: (B, 2N, 3) current clicks; not modified.
        rng: generator for the random pixel choice.
        click_index: the index written into the new clicks' third column.

    Returns:
        The updated (B, 2N, 3) clicks.
    """
    probs_np = probs.detach()[:, 0].float().cpu().numpy()
    gt_np = gt[:, 0].cpu().numpy() > 0.5
    valid_np = valid[:, 0].cpu().numpy().astype(bool)
    updated = points.detach().cpu().clone()
    for b in range(probs_np.shape[0]):
        click = error_click(probs_np[b], gt_np[b], valid_np[b], rng, threshold)
        if click is not None:
            insert_click(updated[b], click[0], click[1], click[2], click_index)
    return updated.to(points.device)
