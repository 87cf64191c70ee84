"""IoU, NoC@t, NoF@t, per-click mean IoU and seconds per click, as in the standard protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_LABEL = -1

# The thresholds the reference evaluation prints: np.arange(0.8, 0.901, 0.05).tolist().
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.arange(0.8, 0.901, 0.05).tolist())


def iou(gt: np.ndarray, pred_mask: np.ndarray, ignore_label: int = IGNORE_LABEL) -> float:
    """Intersection over union of the object (gt == 1); ignore pixels count in neither term.

    Returns 1.0 when both the object and the prediction are empty on the valid pixels.
    """
    valid = gt != ignore_label
    object_mask = gt == 1
    pred_mask = np.asarray(pred_mask, dtype=bool)
    intersection = np.count_nonzero(pred_mask & object_mask & valid)
    union = np.count_nonzero((pred_mask | object_mask) & valid)
    return 1.0 if union == 0 else intersection / union


def noc_of_instance(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """1-based index of the first click whose IoU reaches `threshold`, else `max_clicks`.

    IoUs and threshold are compared in float32, so float32(0.9) reaches 0.9000000000000001.
    """
    reached = np.asarray(ious, dtype=np.float32) >= np.float32(threshold)
    return int(np.argmax(reached)) + 1 if reached.any() else max_clicks


def compute_noc(
    all_ious: Sequence[Sequence[float]],
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    max_clicks: int = 20,
) -> tuple[list[float], list[float], list[int]]:
    """Mean NoC, its (population) standard deviation and NoF for every threshold.

    NoF counts instances whose NoC equals `max_clicks`, including those that reach the threshold
    exactly at the last click.
    """
    noc_mean, noc_std, nof = [], [], []
    for threshold in thresholds:
        nocs = np.array([noc_of_instance(ious, threshold, max_clicks) for ious in all_ious])
        noc_mean.append(float(nocs.mean()) if len(nocs) else float("nan"))
        noc_std.append(float(nocs.std()) if len(nocs) else float("nan"))
        nof.append(int((nocs == max_clicks).sum()))
    return noc_mean, noc_std, nof


def mean_iou_per_click(all_ious: Sequence[Sequence[float]], max_clicks: int = 20) -> list[float]:
    """Mean IoU after clicks 1..max_clicks; an instance that stopped early keeps its last IoU."""
    if not all_ious:
        return []
    table = np.zeros((len(all_ious), max_clicks), dtype=np.float64)
    for row, ious in enumerate(all_ious):
        ious = np.asarray(ious, dtype=np.float64)[:max_clicks]
        if len(ious) == 0:
            continue
        table[row, : len(ious)] = ious
        table[row, len(ious) :] = ious[-1]
    return table.mean(axis=0).tolist()


def seconds_per_click(times: Sequence[float], num_clicks: Sequence[int]) -> float:
    """Total wall time over the total number of clicks (SPC)."""
    total_clicks = int(sum(num_clicks))
    return float(sum(times)) / total_clicks if total_clicks else float("nan")


def threshold_label(threshold: float) -> str:
    """`0.8500000000000001` -> `"85"`, the name used in NoC@85."""
    return f"{round(threshold * 100, 4):g}"
