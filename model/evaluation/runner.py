"""Run the robot-click protocol on one instance or a whole dataset."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..interactive import InteractivePredictor
from .clicker import Click, Clicker
from .datasets import Sample
from .metrics import iou


@dataclass
class InstanceResult:
    """Outcome of one instance: IoU after each click (float32 values), the clicks, and the time."""

    name: str
    ious: list[float]
    clicks: list[Click] = field(default_factory=list)
    time_s: float = 0.0

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
) -> InstanceResult:
    """Click until IoU >= `stop_iou` (after at least `min_clicks`) or `max_clicks` is reached.

    Each click is chosen by the robot `Clicker` from the predictor's mask after the previous click (an empty
    mask before the first). Time covers `set_image` and every click, robot included.
    """
    if image.shape[:2] != gt.shape:
        raise ValueError(f"image {image.shape[:2]} and gt {gt.shape} sizes differ")
    start = time.perf_counter()
    clicker = Clicker(gt)
    pred_mask = np.zeros(gt.shape, dtype=bool)
    ious: list[float] = []
    predictor.set_image(image)
    predictor.reset()
    for click_number in range(1, max_clicks + 1):
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
    return InstanceResult(name=name, ious=ious, clicks=list(clicker.clicks), time_s=elapsed)


def evaluate_dataset(
    predictor: InteractivePredictor,
    samples: Iterable[Sample],
    max_clicks: int = 20,
    stop_iou: float = 0.90,
    limit: int | None = None,
    desc: str = "",
    progress: bool = True,
) -> list[InstanceResult]:
    """Evaluate every sample (the first `limit` ones if given) with a progress bar."""
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if limit is not None and total is not None:
        total = min(total, limit)
    results: list[InstanceResult] = []
    with tqdm(total=total, desc=desc or None, unit="inst", disable=not progress) as bar:
        for sample in itertools.islice(samples, limit):
            result = evaluate_instance(predictor, sample.image, sample.gt, max_clicks, stop_iou, name=sample.name)
            results.append(result)
            bar.update(1)
            bar.set_postfix(clicks=result.num_clicks, iou=f"{result.ious[-1]:.3f}")
    return results
