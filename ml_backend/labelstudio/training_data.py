"""A Label Studio project's annotations as fine-tuning data: the worker's source for ``labelstudio`` jobs.

Pulls the project's annotations through the Label Studio API (``/api/projects/{id}/export``), keeps per task the
newest submitted annotation that is neither cancelled nor empty (a ground-truth one first), and reads each of its
brush and polygon regions as one instance mask (``regions.read_region``, the export's reader too); images are
fetched as the predictor fetches them (``ml_backend.media.fetcher.MediaFetcher``).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings
from ..errors import MediaError
from ..finetuning.sources import TaskData
from ..jsonbody import loads
from ..media.urls import UnsafeURL
from .labeling_config import parse_label_config
from .regions import MASK_RESULT_TYPES, RegionError, read_region

log = logging.getLogger("adaptiveclick.finetune")


class LabelStudioSource:
    """The worker's source for a Label Studio project (``finetuning.sources.AnnotationSource``)."""

    def __init__(self, settings: Settings, project: str):
        from ..media.fetcher import MediaFetcher

        self.project = project
        self.fetcher = MediaFetcher(settings)

    def collect(self, cfg: Any) -> tuple[list[TaskData], dict[str, int]]:
        return collect_annotations(LabelStudioAPI(self.fetcher), self.fetcher, self.project, cfg)

    def nothing_usable(self, stats: dict[str, int]) -> str:
        return nothing_usable(stats)


def nothing_usable(stats: dict[str, int]) -> str:
    return (
        f"submitted, not cancelled, with at least one brush or polygon region; {stats.get('tasks', 0)} annotated "
        f"tasks seen, {stats.get('cancelled', 0)} cancelled and {stats.get('empty', 0)} empty annotations skipped"
    )


class LabelStudioAPI:
    """The two read calls a job makes, with the backend's auth (PAT exchanged, or legacy token)."""

    def __init__(self, fetcher: Any, timeout: float = 120.0):
        self.fetcher = fetcher
        self.timeout = timeout

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        from urllib.parse import urlencode

        import requests

        try:
            base = self.fetcher.ls_destination.with_path("").url
            query = f"?{urlencode(params)}" if params else ""
            url = self.fetcher.ls_destination.with_path(path + query).url
        except (MediaError, UnsafeURL) as exc:
            raise RuntimeError(exc.message) from None
        for attempt in range(2):
            headers = self.fetcher.auth.headers(base, force_refresh=attempt == 1)
            try:
                # No redirects: the token must reach Label Studio's origin and nothing else.
                resp = self.fetcher.session.get(url, headers=headers, timeout=self.timeout, allow_redirects=False)
            except (requests.RequestException, ValueError) as exc:  # ValueError: a malformed redirect Location
                raise RuntimeError(
                    f"cannot reach Label Studio at {base} ({type(exc).__name__}): check LABEL_STUDIO_URL"
                ) from None
            if resp.is_redirect:
                raise RuntimeError(
                    f"Label Studio answered GET {path} with a redirect ({resp.status_code}); "
                    "set LABEL_STUDIO_URL to the address it serves the API on"
                )
            if resp.status_code in (401, 403) and self.fetcher.auth.kind == "pat" and attempt == 0:
                continue
            if resp.status_code in (401, 403):
                raise RuntimeError(
                    f"Label Studio refused GET {path} ({resp.status_code}): set LABEL_STUDIO_API_KEY "
                    "to a token of a user with access to the project"
                )
            if resp.status_code >= 400:
                raise RuntimeError(f"Label Studio answered {resp.status_code} for GET {path}: {resp.text[:300]}")
            try:
                return loads(resp.content)
            except (ValueError, RecursionError) as exc:  # NumberTooLarge, not JSON, nested too deeply
                raise RuntimeError(f"Label Studio sent unusable JSON for GET {path}: {str(exc)[:200]}") from None
        raise RuntimeError("unreachable")  # pragma: no cover

    def project(self, project: str) -> dict[str, Any]:
        return self.get(f"/api/projects/{project}")

    def annotated_tasks(self, project: str) -> list[dict[str, Any]]:
        tasks = self.get(f"/api/projects/{project}/export", {"exportType": "JSON", "download_all_tasks": "false"})
        if not isinstance(tasks, list):
            raise RuntimeError(f"unexpected export of project {project}: {str(tasks)[:200]}")
        return tasks


def _pick_annotation(task: dict[str, Any], stats: dict[str, int]) -> dict[str, Any] | None:
    """The task's newest usable annotation (ground truth first); cancelled and empty ones are skipped."""
    usable = []
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, dict):
            continue
        if annotation.get("was_cancelled"):
            stats["cancelled"] += 1
            continue
        regions = [
            r
            for r in annotation.get("result") or []
            if isinstance(r, dict)
            and str(r.get("type", "")).lower() in MASK_RESULT_TYPES
            and isinstance(r.get("value"), dict)
        ]
        if not regions:
            stats["empty"] += 1
            continue
        usable.append(
            (
                bool(annotation.get("ground_truth")),
                str(annotation.get("updated_at") or ""),
                int(annotation.get("id") or 0),
                annotation,
                regions,
            )
        )
    if not usable:
        return None
    usable.sort(key=lambda u: u[:3])
    _, _, _, annotation, regions = usable[-1]
    return dict(annotation, result=regions)


def collect_annotations(
    api: LabelStudioAPI, fetcher: Any, project: str, cfg: Any
) -> tuple[list[TaskData], dict[str, int]]:
    """The project's usable annotations as (image, instance masks) per task, newest tasks last; and counts
    (``cfg``: the job's ``JobConfig``)."""
    stats = {
        "tasks": 0,
        "annotated_tasks": 0,
        "annotations_used": 0,
        "cancelled": 0,
        "empty": 0,
        "empty_regions": 0,
        "instances": 0,
        "image_errors": 0,
    }
    project_info = api.project(project)
    config = parse_label_config(project_info.get("label_config") or "<View/>")
    tasks = api.annotated_tasks(project)
    stats["tasks"] = len(tasks)
    picked = []
    for task in tasks:
        if not isinstance(task, dict) or not isinstance(task.get("id"), int):
            continue
        annotation = _pick_annotation(task, stats)
        if annotation is not None:
            picked.append((task, annotation))
    picked.sort(key=lambda p: p[0]["id"])
    picked = picked[-cfg.max_tasks :]
    out = []
    for task, annotation in picked:
        to_name = annotation["result"][0].get("to_name")
        tag = config.images.get(to_name) or next(iter(config.images.values()), None)
        if tag is None or tag.data_key not in (task.get("data") or {}):
            stats["image_errors"] += 1
            log.warning("task %s: no image field for %r in the task data", task["id"], to_name)
            continue
        url = task["data"][tag.data_key]
        if isinstance(url, list):
            url = url[0] if url else None
        try:
            image = fetcher.load(url, task["id"]).array
        except Exception as exc:  # one bad image does not fail the job
            stats["image_errors"] += 1
            log.warning("task %s: image not loaded (%s)", task["id"], getattr(exc, "message", exc))
            continue
        masks = []
        for i, region in enumerate(annotation["result"]):
            try:
                saved = read_region(region, f"task {task['id']} result[{i}]", fetcher.settings.max_image_pixels)
            except RegionError as exc:  # one bad region does not fail the task
                log.warning("%s", exc)
                continue
            mask = saved.mask_at(*image.shape[:2])  # the UI may have reported another size (EXIF, rescaled file)
            if not mask.any():
                stats["empty_regions"] += 1
                continue
            masks.append(mask)
        if masks:
            stats["annotated_tasks"] += 1
            stats["annotations_used"] += 1
            stats["instances"] += len(masks)
            out.append(TaskData(task["id"], annotation.get("id"), image, masks))
    return out, stats
