"""Where a fine-tuning job's training data comes from: one source per annotation platform, one data shape.

A job record names its ``platform`` (``labelstudio`` when absent: records written before CVAT could train),
its ``project`` in that platform and, for CVAT, what triggered it (``source``). The worker asks the platform's
source (``ml_backend.labelstudio.training_data``, ``ml_backend.cvat.annotations``) for :class:`TaskData`; from
there on, the split, the gate and the promotion are the same for every platform.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

LABEL_STUDIO, CVAT = "labelstudio", "cvat"
PLATFORMS = (LABEL_STUDIO, CVAT)


class JobSkipped(Exception):
    """Nothing to train on (the message says why); the job ends "skipped", not "failed"."""


@dataclasses.dataclass
class TaskData:
    task_id: int  # Label Studio: the task id; CVAT: task id * FRAME_KEY + frame number (one image each)
    annotation_id: int | None  # Label Studio: the annotation; CVAT: the job the frame's shapes came from
    image: np.ndarray  # HxWx3 uint8, as the predictor sees it
    masks: list[np.ndarray]  # HxW bool, one per mask or polygon region


class AnnotationSource(Protocol):
    """A platform's reader of a project's accepted annotations."""

    def collect(self, cfg: Any) -> tuple[list[TaskData], dict[str, int]]:
        """The usable annotations as (image, instance masks) per image, and counts of what was read and left out."""

    def nothing_usable(self, stats: dict[str, int]) -> str:
        """Why ``collect`` found nothing to learn from, for the skipped job's message."""


def job_platform(job: dict[str, Any]) -> str:
    platform = job.get("platform") or LABEL_STUDIO
    return platform if platform in PLATFORMS else LABEL_STUDIO


def describe_job(job: dict[str, Any]) -> str:
    """``cvat project 3 (job 12)`` / ``labelstudio project 1``: where a job's (or a version's) data came from."""
    text = f"{job_platform(job)} project {job.get('project')}"
    source = job.get("source") if isinstance(job.get("source"), dict) else {}
    if source.get("job") is not None:
        text += f" (job {source['job']})"
    return text
