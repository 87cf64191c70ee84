"""Run the robot-click protocol on one instance or a whole dataset."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..interactive import BoxPromptPredictor, InteractivePredictor
from .clicker import Click, Clicker
from .datasets import Sample
from .metrics import iou

# The first interaction of an instance: a robot click, or the ground truth's tight bounding box (then the robot
# clicks from the box's mask on, and the box counts as interaction 1 in IoU-per-interaction and NoC).
FIRST_INTERACTIONS = ("click", "box")


@dataclass
class InstanceResult:
    """Outcome of one instance: IoU after each interaction (float32 values), the clicks, the time and the box
    prompt ``(x0, y0, x1, y1)`` when the first interaction was a box."""

    name: str
    ious: list[float]
    clicks: list[Click] = field(default_factory=list)
    time_s: float = 0.0
    box: tuple[int, int, int, int] | None = None

    @property
    def num_clicks(self) -> int:
        return len(self.ious)


def evaluate_instance(
    predictor: InteractivePredictor,
    image: np.ndarray,
    gt: np.ndarray,
    max_clicks: int = 20,
    stop_iou: float = 0.90,
    min_clicks: int = 1,
    name: str = "",
    first: str = "click",
    box_pad: float = 0.0,
) -> InstanceResult:
    """Click until IoU >= `stop_iou` (after at least `min_clicks`) or `max_clicks` is reached.

    Each click is chosen by the robot `Clicker` from the predictor's mask after the previous interaction (an
    empty mask before the first). With ``first="box"`` the first interaction is the tight bounding box of the
    object's pixels (grown by ``box_pad`` of its sides, a looser human box) instead of a click. Time covers
    `set_image` and every interaction, robot included.
    """
    if image.shape[:2] != gt.shape:
        raise ValueError(f"image {image.shape[:2]} and gt {gt.shape} sizes differ")
    box = None
    if first == "box":
        if not isinstance(predictor, BoxPromptPredictor):
            raise ValueError(f"{type(predictor).__name__} takes no box: evaluate it with the first interaction 'click'")
        box = gt_box(gt, box_pad)
    elif first != "click":
        raise ValueError(f"first interaction must be one of {FIRST_INTERACTIONS}, got {first!r}")
    start = time.perf_counter()
    clicker = Clicker(gt)
    pred_mask = np.zeros(gt.shape, dtype=bool)
    ious: list[float] = []
    predictor.set_image(image)
    predictor.reset()
    for click_number in range(1, max_clicks + 1):
        if box is not None and click_number == 1:
            predictor.set_box(*box)
        else:
            click = clicker.make_next_click(pred_mask)
            predictor.add_click(click.row, click.col, click.is_positive)
        pred_mask = predictor.prediction().mask
        if pred_mask.shape != gt.shape:
            raise ValueError(f"predictor returned shape {pred_mask.shape}, expected {gt.shape}")
        instance_iou = iou(gt, pred_mask)
        ious.append(float(np.float32(instance_iou)))
        if instance_iou >= stop_iou and click_number >= min_clicks:
            break
    elapsed = time.perf_counter() - start
    return InstanceResult(name=name, ious=ious, clicks=list(clicker.clicks), time_s=elapsed, box=box)


def gt_box(gt: np.ndarray, pad: float = 0.0) -> tuple[int, int, int, int]:
    """The object's tight bounding box as rectangle edges ``(x0, y0, x1, y1)``: what an exact annotator draws;
    ``pad`` grows each side by that share of the box's width/height (clipped to the image)."""
    rows = np.flatnonzero((gt == 1).any(axis=1))
    cols = np.flatnonzero((gt == 1).any(axis=0))
    if not len(rows):
        raise ValueError("the ground truth has no object pixel to draw a box around")
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    grow_x, grow_y = round(pad * (x1 - x0)), round(pad * (y1 - y0))
    height, width = gt.shape
    return max(0, x0 - grow_x), max(0, y0 - grow_y), min(width, x1 + grow_x), min(height, y1 + grow_y)


def evaluate_dataset(
    predictor: InteractivePredictor,
    samples: Iterable[Sample],
    max_clicks: int = 20,
    stop_iou: float = 0.90,
    limit: int | None = None,
    desc: str = "",
    progress: bool = True,
    first: str = "click",
    box_pad: float = 0.0,
) -> list[InstanceResult]:
    """Evaluate every sample (the first `limit` ones if given) with a progress bar; `first` and `box_pad`: see
    :func:`evaluate_instance`."""
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if limit is not None and total is not None:
        total = min(total, limit)
    results: list[InstanceResult] = []
    with tqdm(total=total, desc=desc or None, unit="inst", disable=not progress) as bar:
        for sample in itertools.islice(samples, limit):
            result = evaluate_instance(
                predictor, sample.image, sample.gt, max_clicks, stop_iou, name=sample.name, first=first, box_pad=box_pad
            )
            results.append(result)
            bar.update(1)
            bar.set_postfix(clicks=result.num_clicks, iou=f"{result.ious[-1]:.3f}")
    return results
