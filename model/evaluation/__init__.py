"""Standard NoC evaluation of click-based segmenters: robot clicker, metrics, datasets, baseline."""

from ..interactive import InteractivePredictor
from .clicker import Click, Clicker, next_click
from .datasets import DatasetError, DatasetNotFoundError, Sample, load_dataset, open_dataset
from .grabcut import GrabCutPredictor
from .metrics import DEFAULT_IOU_THRESHOLDS, compute_noc, iou, mean_iou_per_click, noc_of_instance
from .runner import InstanceResult, evaluate_dataset, evaluate_instance

__all__ = [
    "Click",
    "Clicker",
    "DEFAULT_IOU_THRESHOLDS",
    "DatasetError",
    "DatasetNotFoundError",
    "GrabCutPredictor",
    "InstanceResult",
    "InteractivePredictor",
    "Sample",
    "compute_noc",
    "evaluate_dataset",
    "evaluate_instance",
    "iou",
    "load_dataset",
    "mean_iou_per_click",
    "next_click",
    "noc_of_instance",
    "open_dataset",
]
