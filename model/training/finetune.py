"""Fine-tuning from in-memory annotations: adapters between (image, instance masks) and the training code.

* :func:`memory_source` turns ``[(image, [mask, ...]), ...]`` into a :class:`~model.training.data.TrainSource` whose
  records the unchanged :class:`~model.training.data.ClickTrainDataset` samples from (augmentations, multi-point click
  sampler), so fine-tuning uses the reference recipe: AFL + CE + dice set criterion and iterative click
  simulation (:class:`~model.training.Trainer`).
* :func:`finetune` fine-tunes a checkpoint on such a source for a number of steps and returns the network.
* :func:`evaluate_noc` measures NoC@85/90 with the robot clicker of ``model.evaluation``.

Used by the Label Studio backend's fine-tuning worker (``ml_backend/finetuning/worker.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling.adaptiveclick import AdaptiveClick
from .data import AnnotatedImage, TrainSource
from .trainer import TrainConfig, Trainer

MEMORY_DATA = "<annotations in memory>"


def pack_instances(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Instance masks (HxW bool, possibly overlapping) -> ``(layers (H, W, L) int32, objects [(layer, id)])``.

    Non-overlapping instances share a label layer; an instance overlapping one already placed goes to the next
    layer, so every instance keeps all its pixels."""
    if not masks:
        raise ValueError("no instance masks")
    shape = masks[0].shape
    layers: list[np.ndarray] = []
    counts: list[int] = []
    objects: list[tuple[int, int]] = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"instance mask {mask.shape} differs from the first one {shape}")
        for index, layer in enumerate(layers):  # noqa: B007 - `index` is the layer found, used after the loop
            if not (layer[mask] > 0).any():
                break
        else:
            layers.append(np.zeros(shape, np.int32))
            counts.append(0)
            index = len(layers) - 1
        counts[index] += 1
        layers[index][mask] = counts[index]
        objects.append((index, counts[index]))
    return np.stack(layers, axis=2), objects


@dataclass(frozen=True, eq=False)
class MemoryRecord:
    """One annotated image held in memory (the record interface of ``model.training.data``: ``load(rng)``)."""

    image: np.ndarray
    layers: np.ndarray
    objects: tuple[tuple[int, int], ...]
    name: str = ""

    def load(self, rng: np.random.Generator) -> AnnotatedImage:
        return AnnotatedImage(self.image, self.layers, list(self.objects))


def memory_source(
    samples: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]],
    name: str = "annotations",
    names: Sequence[str] | None = None,
) -> TrainSource:
    """A :class:`TrainSource` over ``[(HxWx3 uint8 image, [HxW bool instance mask, ...]), ...]``."""
    source = TrainSource(name, Path(MEMORY_DATA))
    for i, (image, masks) in enumerate(samples):
        masks = [m for m in masks if np.asarray(m).any()]
        if not masks:
            continue
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape}")
        if masks[0].shape != image.shape[:2]:
            raise ValueError(f"masks {masks[0].shape} do not match the image {image.shape[:2]}")
        layers, objects = pack_instances(masks)
        source.records.append(MemoryRecord(image, layers, tuple(objects), names[i] if names else str(i)))
    return source


class MemoryTrainer(Trainer):
    """A :class:`Trainer` on given :class:`TrainSource` objects instead of folders.

    It writes nothing but the run folder's log (``save`` is a no-op: the caller decides what to keep)."""

    def __init__(self, cfg: TrainConfig, sources: Sequence[TrainSource]) -> None:
        if not cfg.data:
            cfg.data = [MEMORY_DATA]
        super().__init__(cfg, sources=sources)

    def save(self) -> None:  # no last.pt / model_last.safetensors for a fine-tuning job
        pass


# Where a fine-tuning job departs from TrainConfig's defaults (batch 8, Adam lr 5e-5, x0.1 after 2/3 of the
# steps: the trainer's recipe, which on CamVid cut NoC@85 3.7x more than 100 steps of 4 at a constant 3e-5 did;
# see benchmarks/HISTORY.md): a short run from a trained checkpoint on in-memory annotations, with no checkpoints
# of its own.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "steps": 300,
    "clip_grad": 1.0,
    "zoom_in_prob": 0.5,  # samples cropped around the object as the predictor's zoom-in sees it
    "workers": 0,  # the records are in memory
    "save_every_min": 1e9,
}


def finetune_config(**overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tuning run: :data:`FINETUNE_DEFAULTS`, then ``overrides``."""
    settings = {**FINETUNE_DEFAULTS, **overrides}
    settings.setdefault("log_every", max(1, min(10, int(settings["steps"]))))
    return TrainConfig(data=[MEMORY_DATA], **settings)


def finetune(
    init: str | Path,
    source: TrainSource,
    cfg: TrainConfig,
    out: str | Path | None = None,
    max_minutes: float | None = None,
) -> tuple[AdaptiveClick, dict[str, Any]]:
    """Fine-tune the checkpoint ``init`` on ``source`` with ``cfg`` (see :func:`finetune_config`); returns
    (network in eval mode on the CPU, run info).

    ``cfg.init``, ``cfg.data`` and ``cfg.out`` are set here. ``run_info["stopped"]`` is True when a
    SIGTERM/SIGINT ended the run early (the caller should then not promote it); ``max_minutes`` caps the run's
    wall time (a capped run is a normal result)."""
    with tempfile.TemporaryDirectory(prefix="adaptiveclick-ft-") as tmp:
        cfg = replace(cfg, init=str(init), data=[MEMORY_DATA], out=str(out or tmp))
        trainer = MemoryTrainer(cfg, [source])
        result = trainer.run(max_minutes=max_minutes)
        result["stopped"] = bool(trainer._stop_requested)
        result["autocast"] = str(trainer.amp_dtype).removeprefix("torch.")
        net = trainer.net.eval().cpu()
        log_path = Path(cfg.out) / "log.csv"
        result["log"] = log_path.read_text() if log_path.is_file() else ""
    return net, result


@dataclass
class NocResult:
    noc85: float
    noc90: float
    instances: int
    nof85: int
    nof90: int
    mean_iou_first_click: float
    seconds: float
    noc85_per_instance: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def evaluate_noc(
    net: AdaptiveClick,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    max_clicks: int = 20,
    device: str | torch.device | None = "cpu",
    flip: bool = True,
    zoom_in: bool = True,
    refine: str | None = None,
) -> NocResult:
    """NoC@85/90 (robot clicker, stop at IoU 0.90) over ``[(image, gt mask), ...]`` (gt: bool or 0/1/-1)."""
    import time

    from ..evaluation.metrics import compute_noc, noc_of_instance
    from ..evaluation.runner import evaluate_instance
    from ..predictor import Predictor

    predictor = Predictor(net, device=device, flip=flip, zoom_in=zoom_in, refine=refine)
    t0 = time.perf_counter()
    all_ious = []
    with torch.inference_mode():
        for image, gt in samples:
            gt = np.asarray(gt)
            gt = gt.astype(np.int8) if gt.dtype == bool else gt
            all_ious.append(evaluate_instance(predictor, image, gt, max_clicks=max_clicks).ious)
    if not all_ious:
        return NocResult(float("nan"), float("nan"), 0, 0, 0, float("nan"), 0.0)
    (noc85, noc90), _, (nof85, nof90) = compute_noc(all_ious, (0.85, 0.90), max_clicks)
    return NocResult(
        noc85,
        noc90,
        len(all_ious),
        nof85,
        nof90,
        float(np.mean([i[0] for i in all_ious])),
        time.perf_counter() - t0,
        [int(noc_of_instance(i, 0.85, max_clicks)) for i in all_ious],
    )
