"""What every click-based segmenter offers: the protocol the evaluation and the backend program against.

The predictor owns its output: it thresholds its own probability map (``threshold``) and reports the mask with
a confidence score (:meth:`InteractivePredictor.prediction`), so no caller re-thresholds. Torch-free, so the
backend can type against it without importing the network.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np


class Prediction(NamedTuple):
    """The answer after the last click."""

    mask: np.ndarray  # HxW bool: probs > threshold
    probs: np.ndarray  # HxW float32 in [0, 1]
    score: float  # mean probability inside the mask (0 for an empty mask): the region's confidence


def prediction_from(probs: np.ndarray, threshold: float) -> Prediction:
    """Threshold a probability map and score the mask (the one place this is computed)."""
    probs = np.asarray(probs, dtype=np.float32)
    mask = probs > threshold
    area = int(np.count_nonzero(mask))
    score = float(np.sum(probs, where=mask, dtype=np.float64) / area) if area else 0.0
    return Prediction(mask, probs, score)


@runtime_checkable
class InteractivePredictor(Protocol):
    """A click-based segmenter: one image, clicks one after another, a mask after each."""

    threshold: float  # probability above which a pixel is in the mask

    def set_image(self, image: np.ndarray) -> None:
        """Take an HxWx3 uint8 RGB image and forget all clicks."""

    def add_click(self, row: int, col: int, positive: bool) -> np.ndarray:
        """Add a click and return the float32 HxW probability map after it."""

    def reset(self) -> None:
        """Forget all clicks, keep the image."""

    def prediction(self) -> Prediction:
        """Mask, probabilities and score after the last click (raises before the first click)."""


def nearest_edge(value: float) -> int:
    """A box edge in fractional pixels (CVAT's corners, Label Studio's percentages times the size) -> the nearest
    pixel edge, halves up: the one rule for a box's edges everywhere (``set_box``, ``predict --box``, ``serve``)."""
    return math.floor(value + 0.5)


@runtime_checkable
class BoxPromptPredictor(InteractivePredictor, Protocol):
    """A predictor whose first interaction may be a box around the object instead of a click."""

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Forget all clicks, start from the box (left/top edges x0, y0; right/bottom edges x1, y1, in pixels)
        and return the float32 HxW probability map after it; later clicks refine the same object."""


@runtime_checkable
class PreviousMaskPredictor(InteractivePredictor, Protocol):
    """A predictor that can continue an existing mask: it becomes the previous mask of the next click."""

    def set_previous_mask(self, mask: np.ndarray) -> None:
        """Forget all clicks and start from ``mask`` (HxW bool or probabilities) as if clicks had produced it."""


@runtime_checkable
class StatefulPredictor(InteractivePredictor, Protocol):
    """A predictor whose state after a click can be saved and restored (a click prefix is replayed for free)."""

    def get_state(self) -> Any:
        """A snapshot of everything that determines the next prediction (never modified afterwards)."""

    def set_state(self, state: Any) -> None:
        """Continue from a snapshot taken by :meth:`get_state` on a predictor with the same image."""


@runtime_checkable
class PortableStatePredictor(StatefulPredictor, Protocol):
    """A stateful predictor whose states travel as bytes (``SESSION_STORE``: another worker continues a session)."""

    state_tag: str  # the settings a state depends on: a state is only imported by a predictor with the same tag

    def export_state(self, state: Any = None) -> bytes:
        """The state (default: the current one) as bytes, losslessly."""

    def import_state(self, data: bytes) -> Any:
        """A state from :meth:`export_state`'s bytes, for :meth:`set_state`; ValueError when they do not fit."""
