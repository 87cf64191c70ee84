"""Classical baseline: OpenCV GrabCut seeded by the clicks."""

from __future__ import annotations

import cv2
import numpy as np

from ..interactive import Prediction, prediction_from


class GrabCutPredictor:
    """Click-driven GrabCut implementing the `InteractivePredictor` protocol.

    Seeds, at a working resolution whose longer side is at most `working_size`:
    probable background everywhere, the previous mask as probable foreground, a probable-foreground
    disk around every positive click (a probable-background one around every negative click), then
    hard foreground / background disks at the clicks, later clicks drawn over earlier ones.
    The returned map is 0/1 float32 at full resolution.
    """

    def __init__(
        self,
        working_size: int = 400,
        iterations: int = 3,
        click_radius: int = 5,
        probable_radius_ratio: float = 0.12,
    ) -> None:
        self.working_size = working_size
        self.iterations = iterations
        self.click_radius = click_radius
        self.probable_radius_ratio = probable_radius_ratio
        self._image: np.ndarray | None = None
        self._full_shape: tuple[int, int] = (0, 0)
        self._scale = 1.0
        self._clicks: list[tuple[int, int, bool]] = []
        self._prev_mask: np.ndarray | None = None
        self._probs: np.ndarray | None = None  # the last map, at full resolution
        self.threshold = 0.5  # the map is 0/1

    def set_image(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        self._full_shape = (height, width)
        self._scale = min(1.0, self.working_size / max(height, width))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if self._scale < 1.0:
            size = (max(1, round(width * self._scale)), max(1, round(height * self._scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        self._image = np.ascontiguousarray(bgr)
        self.reset()

    def reset(self) -> None:
        self._clicks = []
        self._prev_mask = None
        self._probs = None

    def prediction(self) -> Prediction:
        if self._probs is None:
            raise RuntimeError("no click yet: call add_click first")
        return prediction_from(self._probs, self.threshold)

    def add_click(self, row: int, col: int, positive: bool) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("call set_image before add_click")
        height, width = self._image.shape[:2]
        small_row = min(height - 1, int(row * self._scale))
        small_col = min(width - 1, int(col * self._scale))
        self._clicks.append((small_row, small_col, bool(positive)))
        mask = self._segment(self._seed_mask())
        self._prev_mask = mask
        self._probs = self._to_full_resolution(mask)
        return self._probs

    def _seed_mask(self) -> np.ndarray:
        height, width = self._image.shape[:2]
        seeds = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)
        if self._prev_mask is not None:
            seeds[self._prev_mask] = cv2.GC_PR_FGD
        probable_radius = max(self.click_radius + 1, round(self.probable_radius_ratio * min(height, width)))
        for row, col, positive in self._clicks:
            label = cv2.GC_PR_FGD if positive else cv2.GC_PR_BGD
            cv2.circle(seeds, (col, row), probable_radius, int(label), thickness=-1)
        for row, col, positive in self._clicks:
            label = cv2.GC_FGD if positive else cv2.GC_BGD
            cv2.circle(seeds, (col, row), self.click_radius, int(label), thickness=-1)
        return seeds

    def _segment(self, seeds: np.ndarray) -> np.ndarray:
        is_foreground_seed = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
        if is_foreground_seed.all() or not is_foreground_seed.any():
            return is_foreground_seed
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        labels = seeds.copy()
        try:
            cv2.grabCut(
                self._image,
                labels,
                None,
                background_model,
                foreground_model,
                self.iterations,
                cv2.GC_INIT_WITH_MASK,
            )
        except cv2.error:
            return is_foreground_seed
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)

    def _to_full_resolution(self, mask: np.ndarray) -> np.ndarray:
        height, width = self._full_shape
        probability = mask.astype(np.float32)
        if probability.shape != (height, width):
            probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
        return (probability > 0.5).astype(np.float32)
