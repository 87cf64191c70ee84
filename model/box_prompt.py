"""A box as the first prompt: how a click-trained network is steered by a bounding box without retraining.

AdaptiveClick takes clicks and a previous mask, never a box. :class:`BoxStrategy` turns a box into what the network
does take: the zoom-in ROI (the box, expanded for context, instead of the whole image a first click sees), derived
clicks (a positive click at the box's centre, or at the innermost point of a first guess inside the box; optionally
negatives just outside its corners), an optional box-shaped prior previous mask, and a clip of the map to the box
(the box says the object is inside it). :data:`DEFAULT_BOX_STRATEGY` is the combination chosen on validation
splits of training data (``benchmarks/box_prompt.py``, ``docs/box_prompt.md``).

Boxes are inclusive pixel boxes ``(rmin, rmax, cmin, cmax)`` like the zoom-in's ROIs; :func:`box_from_corners`
reads the ``x0, y0, x1, y1`` edges an annotation tool sends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .interactive import nearest_edge
from .zoom_in import Box, Click, clamp_bbox, expand_bbox

__all__ = ["DEFAULT_BOX_STRATEGY", "BoxPrompt", "BoxStrategy", "box_from_corners", "inner_click"]

CLICK_PLACEMENTS = ("centre", "inner")
PRIORS = ("none", "box", "ellipse")


@dataclasses.dataclass(frozen=True)
class BoxPrompt:
    """A box as the predictor's state holds it: the box, the clicks derived from it (the network sees them before
    the user's), the ROI of the box-only prediction and the region the map is clipped to (``None``: no clip)."""

    box: Box
    clicks: tuple[Click, ...]
    roi: Box
    clip: Box | None


@dataclasses.dataclass(frozen=True)
class BoxStrategy:
    """How a box becomes network input; the fields are the candidates ``benchmarks/box_prompt.py`` measures."""

    roi_ratio: float = 1.4  # the ROI is the box scaled about its centre (context around the object) ...
    roi_min_size: int = 100  # ... each side at least this many pixels
    click: str = "centre"  # "centre" of the box, or "inner": the innermost pixel of a first guess inside the box
    corner_negatives: bool = False  # negative clicks just outside the box's four corners
    prior: str = "none"  # previous-mask prior: "none", the filled "box" or the box's inscribed "ellipse" ...
    prior_value: float = 0.5  # ... with this probability inside
    clip_margin: float | None = 0.05  # zero the map outside the box grown by this share of its sides (None: no clip)
    feedback: bool = False  # a second look whose previous mask is the first look's (clipped) map

    @property
    def second_look(self) -> bool:
        """Whether the box-only prediction runs twice (an inner click or feedback needs a first guess)."""
        return self.click == "inner" or self.feedback

    def __post_init__(self) -> None:
        if self.click not in CLICK_PLACEMENTS:
            raise ValueError(f"box click placement must be one of {CLICK_PLACEMENTS}, got {self.click!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"box prior must be one of {PRIORS}, got {self.prior!r}")
        if not self.roi_ratio >= 1.0 or self.roi_min_size < 1 or not 0.0 <= self.prior_value <= 1.0:
            raise ValueError(f"invalid box strategy {self}")
        if self.clip_margin is not None and not self.clip_margin >= 0.0:
            raise ValueError(f"box clip margin must be >= 0 or None, got {self.clip_margin}")

    def prompt(self, box: Box, image_hw: tuple[int, int]) -> BoxPrompt:
        """The prompt for ``box`` with the box's centre as its positive click (``inner`` replaces it later)."""
        height, width = image_hw
        rmin, rmax, cmin, cmax = box
        clicks = [Click((rmin + rmax) // 2, (cmin + cmax) // 2, True)]
        if self.corner_negatives:
            # A few pixels outside each corner: background for almost any object a box was drawn around.
            gap = max(2, round(0.03 * max(rmax - rmin, cmax - cmin)))
            for row in (rmin - gap, rmax + gap):
                for col in (cmin - gap, cmax + gap):
                    if 0 <= row < height and 0 <= col < width:
                        clicks.append(Click(row, col, False))
        roi = clamp_bbox(expand_bbox(box, self.roi_ratio, self.roi_min_size), height, width)
        clip = None
        if self.clip_margin is not None:
            # Exact margins (not expand_bbox, whose reference rounding grows even a x1.0 box by a pixel).
            grow_rows = round(self.clip_margin * (rmax - rmin + 1))
            grow_cols = round(self.clip_margin * (cmax - cmin + 1))
            clip = clamp_bbox((rmin - grow_rows, rmax + grow_rows, cmin - grow_cols, cmax + grow_cols), height, width)
        return BoxPrompt(box, tuple(clicks), roi, clip)

    def prior_map(self, box: Box, image_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The (1, 1, H, W) previous mask the box-only prediction starts from (zeros without a prior)."""
        prior = torch.zeros((1, 1, *image_hw), device=device)
        rmin, rmax, cmin, cmax = box
        if self.prior == "box":
            prior[:, :, rmin : rmax + 1, cmin : cmax + 1] = self.prior_value
        elif self.prior == "ellipse":
            rows = torch.arange(rmin, rmax + 1, device=device, dtype=torch.float32)[:, None]
            cols = torch.arange(cmin, cmax + 1, device=device, dtype=torch.float32)[None, :]
            half_h, half_w = max(0.5, (rmax - rmin) / 2), max(0.5, (cmax - cmin) / 2)
            inside = ((rows - (rmin + rmax) / 2) / half_h) ** 2 + ((cols - (cmin + cmax) / 2) / half_w) ** 2 <= 1.0
            prior[0, 0, rmin : rmax + 1, cmin : cmax + 1] = inside.float() * self.prior_value
        return prior


# Chosen on ECSSD:val and COCO-MVal:val by box-alone IoU (docs/box_prompt.md, benchmarks/box_prompt.py): the best
# worst-case gain over one click of the one-look candidates; looking twice gained no more than noise for a second
# forward.
DEFAULT_BOX_STRATEGY = BoxStrategy(roi_ratio=2.0, corner_negatives=True, clip_margin=0.0)


def box_from_corners(x0: float, y0: float, x1: float, y1: float, image_hw: tuple[int, int]) -> Box:
    """The inclusive pixel box of the rectangle with left/top edge ``(x0, y0)`` and right/bottom edge ``(x1, y1)``
    (pixel ``c`` spans ``[c, c + 1)``), clipped to the image. Fractional edges (CVAT's box corners, Label Studio's
    percentages times the size) are rounded to the nearest pixel edge, the one rule for a box everywhere
    (``predict --box``, ``serve``, both platforms); a rectangle thinner than a pixel keeps the pixel it is in.

    Raises ValueError for non-finite, inverted or empty rectangles and for ones wholly outside the image: a wrong
    box is a client bug worth reporting, whereas a box hanging over the image edge is ordinary and is clipped.
    """
    height, width = image_hw
    corners = (x0, y0, x1, y1)
    if not all(isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in corners):
        raise ValueError(f"box {corners} must be four finite numbers x0, y0, x1, y1")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box x0={x0}, y0={y0}, x1={x1}, y1={y1} is empty or inverted: need x0 < x1 and y0 < y1")
    left, top, right, bottom = (nearest_edge(v) for v in corners)
    if right <= left:  # thinner than a pixel after rounding: the pixels it touches
        left, right = math.floor(x0), math.ceil(x1)
    if bottom <= top:
        top, bottom = math.floor(y0), math.ceil(y1)
    cmin, rmin = max(0, left), max(0, top)
    cmax, rmax = min(width, right) - 1, min(height, bottom) - 1
    if cmin > cmax or rmin > rmax:
        raise ValueError(f"box x0={x0}, y0={y0}, x1={x1}, y1={y1} lies outside the {width}x{height} image")
    return rmin, rmax, cmin, cmax


def inner_click(probs: np.ndarray, box: Box, threshold: float) -> Click | None:
    """The pixel of the mask (``probs > threshold``) inside ``box`` farthest from the mask's border: the most
    certainly-object point, where a user would click. ``None`` when the mask misses the box."""
    rmin, rmax, cmin, cmax = box
    inside = np.pad((probs[rmin : rmax + 1, cmin : cmax + 1] > threshold).astype(np.uint8), 1)
    if not inside.any():
        return None
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(rmin + int(row), cmin + int(col), True)


def clip_to_box(probs: torch.Tensor, prompt: BoxPrompt, clicks: Sequence[Click]) -> torch.Tensor:
    """Zero the map outside the prompt's clip region, unless a user's positive click lies outside it (then the
    user has shown that the object reaches beyond the box and the box no longer bounds it)."""
    if prompt.clip is None:
        return probs
    rmin, rmax, cmin, cmax = prompt.clip
    if any(c.positive and not (rmin <= c.row <= rmax and cmin <= c.col <= cmax) for c in clicks):
        return probs
    clipped = torch.zeros_like(probs)
    clipped[:, :, rmin : rmax + 1, cmin : cmax + 1] = probs[:, :, rmin : rmax + 1, cmin : cmax + 1]
    return clipped
