"""A CVAT project's finished jobs as fine-tuning data: the worker's source for ``cvat`` jobs.

What is read (``api.CvatAPI``, CVAT's REST API with ``CVAT_ACCESS_TOKEN``):

* the jobs of the project (of the task, for a task outside any project) that count as finished now, by
  ``CVAT_FINETUNE_ON`` (default: stage ``acceptance`` or state ``completed``); a job reopened since its webhook
  no longer counts, so a late or repeated delivery cannot train on work that was sent back;
* each job's ``/annotations``: its ``mask`` and ``polygon`` shapes, one instance mask each, per frame; other
  shapes (boxes, points, ...), tracks, and frames the task deleted are counted and left out;
* each annotated frame through the job's data API (``quality=original``), decoded as the interactor decodes it.

A mask's points are CVAT's RLE over the shape's box (row-major run lengths starting with a run of zeros, then
``left, top, right, bottom``, inclusive); a polygon's are ``x0, y0, x1, y1, ...`` in pixels. Both become regions
through ``ml_backend.masks.regions``, the builder Label Studio's brush and polygons go through. A malformed shape
is skipped with a line in the job's log; CVAT answering an error, garbage or nothing ends the job "skipped".
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..config import Settings
from ..finetuning.sources import JobSkipped, TaskData
from ..masks.regions import MaskRegion, RegionError, mask_region, polygon_region
from .api import CvatAPI, CvatError

log = logging.getLogger("adaptiveclick.finetune")

SHAPE_TYPES = ("mask", "polygon")
FRAME_KEY = 1_000_000  # TaskData.task_id = CVAT task id * FRAME_KEY + frame: one image, stable across jobs


def decode_box_rle(points: Any, width: int, height: int, where: str) -> np.ndarray:
    """A ``mask`` shape's points as an image-sized bool mask; ``RegionError`` naming what is wrong."""
    if not isinstance(points, list) or len(points) < 5 or not all(_is_number(v) for v in points):
        raise RegionError(f"{where}: a mask's points must be run lengths then left, top, right, bottom (numbers)")
    left, top, right, bottom = (math.trunc(v) for v in points[-4:])  # CVAT truncates the box too
    if not (0 <= left <= right < width and 0 <= top <= bottom < height):
        raise RegionError(
            f"{where}: the mask's box [{left}, {top}, {right}, {bottom}] is not inside the {width}x{height} frame"
        )
    runs = np.asarray(points[:-4], np.float64)
    if (runs < 0).any() or (runs != np.floor(runs)).any():
        raise RegionError(f"{where}: a mask's run lengths must be non-negative integers")
    box_w, box_h = right - left + 1, bottom - top + 1
    runs = np.minimum(runs, box_w * box_h + 1)  # no run longer than the box counts (and 1e308s cannot sum to inf)
    total = int(runs.sum())
    if total > box_w * box_h:
        raise RegionError(
            f"{where}: the mask's runs cover {total} pixels, its {box_w}x{box_h} box only {box_w * box_h}"
        )
    values = np.arange(len(runs)) % 2 == 1  # runs alternate background, object, ..., starting with background
    flat = np.zeros(box_w * box_h, bool)
    flat[:total] = np.repeat(values, runs.astype(np.int64))  # CVAT's decoder leaves the rest background
    mask = np.zeros((height, width), bool)
    mask[top : bottom + 1, left : right + 1] = flat.reshape(box_h, box_w)
    return mask


def read_shape(shape: dict[str, Any], width: int, height: int, where: str) -> MaskRegion:
    """A ``mask`` or ``polygon`` shape of a job's annotations on a ``width`` x ``height`` frame."""
    kind = shape.get("type")
    label = str(shape.get("label_id", ""))
    points = shape.get("points")
    if kind == "mask":
        return mask_region(label, decode_box_rle(points, width, height, where))
    if kind == "polygon":
        if not isinstance(points, list) or len(points) % 2:
            raise RegionError(f"{where}: a polygon's points must be a flat list x0, y0, x1, y1, ...")
        pairs = [points[i : i + 2] for i in range(0, len(points), 2)]
        return polygon_region(label, pairs, width, height, where, "points")
    raise RegionError(f"{where}: type {kind!r} is not one of {', '.join(SHAPE_TYPES)}")


def job_counts(job: dict[str, Any], triggers: tuple[str, ...]) -> bool:
    """Whether a CVAT job (as ``/api/jobs`` lists it) is finished by ``CVAT_FINETUNE_ON``."""
    return job.get("stage") in triggers or ("completed" in triggers and job.get("state") == "completed")


class CvatSource:
    """The worker's source for a CVAT project (``finetuning.sources.AnnotationSource``)."""

    def __init__(self, settings: Settings, job: dict[str, Any], api: CvatAPI | None = None):
        self.settings = settings
        self.project = str(job.get("project"))
        self.source = job.get("source") if isinstance(job.get("source"), dict) else {}
        self._api = api

    def api(self) -> CvatAPI:
        if self._api is None:
            try:
                self._api = CvatAPI(self.settings)
            except CvatError as exc:
                raise JobSkipped(exc.message) from None
        return self._api

    def collect(self, cfg: Any) -> tuple[list[TaskData], dict[str, int]]:
        try:
            return self._collect(cfg)
        except CvatError as exc:  # CVAT down, slow, refusing or answering garbage: nothing trained, nothing broken
            log.warning("CVAT could not be read: %s", exc.message)
            raise JobSkipped(f"CVAT could not be read: {exc.message}") from None

    def nothing_usable(self, stats: dict[str, int]) -> str:
        on = " or ".join(self.settings.cvat_finetune_on)
        return (
            f"jobs finished by CVAT_FINETUNE_ON ({on}) with mask or polygon shapes; {stats.get('jobs', 0)} of "
            f"{stats.get('jobs_seen', 0)} jobs counted, {stats.get('other_shapes', 0)} other shapes, "
            f"{stats.get('bad_shapes', 0)} malformed shapes and {stats.get('tracks', 0)} tracks left out"
        )

    def _jobs(self) -> list[dict[str, Any]]:
        """The jobs of the project (or of the task that has none) that count as finished now."""
        api = self.api()
        org = self.source.get("organization")
        org = org if isinstance(org, int) and not isinstance(org, bool) else None
        if self.project.startswith("task-"):
            return api.jobs(task_id=int(self.project[5:]), org_id=org)
        return api.jobs(project_id=int(self.project), org_id=org)

    def _collect(self, cfg: Any) -> tuple[list[TaskData], dict[str, int]]:
        api = self.api()
        stats = dict.fromkeys(
            (
                "jobs_seen",
                "jobs",
                "tasks",
                "annotated_tasks",
                "instances",
                "other_shapes",
                "bad_shapes",
                "tracks",
                "deleted_frames",
                "empty_regions",
                "image_errors",
            ),
            0,
        )
        jobs = self._jobs()
        stats["jobs_seen"] = len(jobs)
        triggers = self.settings.cvat_finetune_on
        # Annotation jobs only: ground-truth and consensus-replica jobs repeat frames another job holds.
        finished = [j for j in jobs if j.get("type", "annotation") == "annotation" and job_counts(j, triggers)]
        finished.sort(key=lambda j: j["id"])
        stats["jobs"] = len(finished)
        log.info(
            "CVAT project %s: %d of %d jobs finished (%s)", self.project, len(finished), len(jobs), ", ".join(triggers)
        )
        frames: dict[int, tuple[int, list[tuple[str, dict]]]] = {}  # key -> (CVAT job, [(where, shape)])
        for job in finished:
            self._job_shapes(api, job, frames, stats)
        keys = sorted(frames)[-cfg.max_tasks :]
        stats["tasks"] = len(frames)
        out = []
        for key in keys:
            job_id, shapes = frames[key]
            frame = key % FRAME_KEY
            try:
                image = api.frame(job_id, frame).array
            except CvatError as exc:
                if exc.status in (0, 401, 403) or exc.status >= 500:  # CVAT itself is unusable: the job is skipped
                    raise
                stats["image_errors"] += 1
                log.warning("CVAT job %s frame %s: not loaded (%s)", job_id, frame, exc.message)
                continue
            height, width = image.shape[:2]
            masks = []
            for where, shape in shapes:
                try:
                    mask = read_shape(shape, width, height, where).mask
                except RegionError as exc:  # one bad shape does not fail the frame
                    stats["bad_shapes"] += 1
                    log.warning("%s (skipped)", exc)
                    continue
                if not mask.any():
                    stats["empty_regions"] += 1
                    continue
                masks.append(mask)
            if masks:
                stats["annotated_tasks"] += 1
                stats["instances"] += len(masks)
                out.append(TaskData(key, job_id, image, masks))
        return out, stats

    def _job_shapes(self, api: CvatAPI, job: dict[str, Any], frames: dict, stats: dict[str, int]) -> None:
        """Add the job's mask and polygon shapes to ``frames``, by frame key."""
        job_id, task_id = job["id"], job.get("task_id")
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            stats["bad_shapes"] += 1
            log.warning("CVAT job %s names no task id: left out", job_id)
            return
        try:
            annotations = api.annotations(job_id)
            meta = api.meta(job_id)
        except CvatError as exc:
            if exc.status != 404:
                raise
            log.warning("CVAT job %s is gone (%s): left out", job_id, exc.message)
            return
        deleted = meta.get("deleted_frames")
        deleted = {f for f in deleted if isinstance(f, int)} if isinstance(deleted, list) else set()
        tracks = annotations.get("tracks")
        stats["tracks"] += len(tracks) if isinstance(tracks, list) else 0
        shapes = annotations.get("shapes")
        if not isinstance(shapes, list):
            log.warning("CVAT job %s: its annotations have no shapes list: left out", job_id)
            return
        for i, shape in enumerate(shapes):
            where = f"CVAT job {job_id} shapes[{i}]"
            if not isinstance(shape, dict):
                stats["bad_shapes"] += 1
                log.warning("%s: not an object (skipped)", where)
                continue
            if shape.get("type") not in SHAPE_TYPES:
                stats["other_shapes"] += 1
                continue
            frame = shape.get("frame")
            if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < FRAME_KEY:
                stats["bad_shapes"] += 1
                log.warning("%s: frame %r is not a frame number (skipped)", where, frame)
                continue
            if shape.get("outside"):
                continue
            if frame in deleted:  # both in the task's frame numbering
                stats["deleted_frames"] += 1
                continue
            key = task_id * FRAME_KEY + frame
            if key not in frames or frames[key][0] != job_id:  # a frame two jobs hold: the newer job's shapes
                frames[key] = (job_id, [])
            frames[key][1].append((f"{where} (frame {frame})", shape))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
