"""A Label Studio ``/predict`` body read once, and its answer formatted once.

:func:`read_predict` validates the body, parses the labeling config (cached by its text), extracts the smart
keypoints and box, picks the output tag and finds the task's image; the saved regions a click may continue are read
from the task here too, when the first click of an object asks for them (``ClickRequest.saved``). The adapter works
on the :class:`PredictRequest` alone, and nothing else reads Label Studio's JSON. :func:`answer_regions` turns the
core's mask into the regions the editor shows (a brush mask, or polygons)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import BackendError, BadRequest, ConfigError
from ..masks.polygons import polygon_regions
from .labeling_config import ClickSet, LabelConfig, OutputTag, brush_region, extract_clicks, parse_label_config
from .labeling_config import project_id as read_project_id

log = logging.getLogger("adaptiveclick.backend")


@dataclasses.dataclass(frozen=True)
class ClickRequest:
    """The object one request clicks on and what its answer needs."""

    project: str
    task_id: int | None
    image_url: Any  # what the task's data holds for the clicked <Image> (a URL, normally)
    image_name: str  # the <Image> tag the clicks were made on
    clicks: ClickSet  # the clicks (and box) in percent, with the size the editor reported
    output: OutputTag  # the BrushLabels / PolygonLabels tag and label the answer goes to
    multi: bool  # the <Image> takes a list of images: answers carry ``item_index``
    task: dict[str, Any] = dataclasses.field(repr=False, compare=False)  # its drafts and annotations: saved regions

    @functools.cached_property
    def saved(self) -> tuple[dict[str, Any], ...]:
        """The saved regions a click may continue (:func:`saved_regions`), the preferred first: read only by the
        first click of an object, in the request's thread (a task can hold thousands of regions)."""
        c = self.clicks
        return tuple(saved_regions(self.task, self.output, self.image_name, c.item_index))

    @property
    def object_key(self) -> tuple:
        """The object's session key, before the frame's: project, task, image, item, control tag, label."""
        c = self.clicks
        return (self.project, self.task_id, str(self.image_url), c.item_index, c.from_name, c.label)

    @property
    def box_key(self) -> tuple:
        """Where the object's box is remembered between requests: project, task, image, item, label."""
        return (self.project, self.task_id, str(self.image_url), self.clicks.item_index, self.clicks.label)


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """A ``/predict`` body: how many tasks to answer, and the click request when it has clicks to answer."""

    tasks: int
    click: ClickRequest | None  # None: no clicks (a task opened, a batch), or the config cannot answer them
    prefetch: tuple[int | None, Any] | None = None  # (task id, image URL) to download when a task opens


def _task_id(task: dict[str, Any], where: str) -> int | None:
    tid = task.get("id")
    if tid is None:
        return None
    if isinstance(tid, bool) or not isinstance(tid, int):
        raise BadRequest(f"{where}.id must be an integer")
    return tid


def image_url(task: dict[str, Any], config: LabelConfig, image_name: str, item_index: int) -> Any:
    """What ``task``'s data holds for the <Image> tag ``image_name`` (the config's first when it has none of that
    name), the ``item_index``-th for a list of images."""
    tag = config.images.get(image_name)
    if tag is None:
        if not config.images:
            raise ConfigError("the labeling config has no <Image> tag")
        tag = next(iter(config.images.values()))
    data = task["data"]
    if tag.data_key not in data:
        keys = ", ".join(sorted(map(str, data))[:10])
        raise BadRequest(
            f'task {task.get("id")} has no data field "{tag.data_key}" (the Image tag reads '
            f"${tag.data_key}; the task has: {keys})"
        )
    value = data[tag.data_key]
    if tag.multi or isinstance(value, list):
        if not isinstance(value, list) or not value:
            raise BadRequest(f'task data "{tag.data_key}" must be a non-empty list of image URLs (valueList)')
        if item_index >= len(value):
            raise BadRequest(f"item_index {item_index} is out of range for {len(value)} images")
        value = value[item_index]
    return value


def saved_regions(task: dict[str, Any], output: OutputTag, image_name: str, item_index: int) -> list[dict[str, Any]]:
    """The task's saved regions a click may continue (docs/labeling_ui.md): those of the answer's tag, label and
    image, from its drafts and annotations (not cancelled ones), newest first (Label Studio autosaves the annotation
    being edited as a draft); within one, the last first, which is the newest and the one the editor draws on top.
    Their masks are read only when a click needs them."""
    rtype = "brushlabels" if output.kind == "brush" else "polygonlabels"
    holders = [h for key in ("drafts", "annotations") if isinstance(task.get(key), list) for h in task[key]]
    holders = [h for h in holders if isinstance(h, dict) and isinstance(h.get("result"), list)]
    holders = [h for h in holders if not h.get("was_cancelled")]
    holders.sort(key=lambda h: str(h.get("updated_at") or h.get("created_at") or ""), reverse=True)
    found = []
    for holder in holders:
        for result in reversed(holder["result"]):
            if not isinstance(result, dict) or result.get("type") != rtype or not isinstance(result.get("id"), str):
                continue
            value = result.get("value")
            labels = value.get(rtype) if isinstance(value, dict) else None
            if (result.get("from_name"), result.get("to_name")) != (output.from_name, image_name):
                continue
            if not isinstance(labels, list) or output.label not in labels:
                continue
            if (result.get("item_index") or 0) != item_index:
                continue
            found.append(result)
    return found


def read_predict(
    body: Any,
    schemas: Mapping[str, str],
    output_shape: str,
    report: Callable[[str, LabelConfig, str], None] = lambda *_: None,
) -> PredictRequest:
    """Read a ``/predict`` body (``schemas``: the labeling configs ``/setup`` gave per project, for bodies without
    one; ``output_shape``: ``OUTPUT_SHAPE``; ``report`` logs a config's problems once). Raises ``BadRequest`` (4xx)
    naming what is malformed."""
    if not isinstance(body, dict):
        raise BadRequest("the /predict body must be a JSON object")
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise BadRequest('the /predict body needs "tasks": a non-empty list of task objects')
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise BadRequest(f"tasks[{i}] must be an object")
        if not isinstance(task.get("data"), dict):
            raise BadRequest(f"tasks[{i}].data must be an object")
        _task_id(task, f"tasks[{i}]")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("params must be an object or null")
    context = (params or {}).get("context")
    if context is not None and not isinstance(context, dict):
        raise BadRequest("params.context must be an object or null")
    project = read_project_id(body.get("project"))
    label_config = body.get("label_config")
    if label_config is not None and not isinstance(label_config, str):
        raise BadRequest("label_config must be a string")
    label_config = label_config or schemas.get(project)
    task = tasks[0]

    if context is None:  # a task opened, or a batch: no clicks; the image may be worth downloading already
        return PredictRequest(len(tasks), None, _prefetch(task, label_config) if len(tasks) == 1 else None)
    if not label_config:
        raise BadRequest("label_config is missing from the request and no /setup was received for this project")
    config = parse_label_config(label_config)
    report(label_config, config, project)
    clicks = extract_clicks(context.get("result"), config)
    if clicks is None or not (clicks.clicks or clicks.box):
        return PredictRequest(len(tasks), None)
    image_name = clicks.to_name if clicks.to_name in config.images else next(iter(config.images), "")
    try:
        output = config.output_for(image_name, clicks.label, output_shape)
    except ConfigError as exc:  # the config cannot answer: an empty answer, the reason in the log
        log.error("cannot answer the click on task %s: %s", task.get("id"), exc.message)
        return PredictRequest(len(tasks), None)
    click = ClickRequest(
        project=project,
        task_id=task.get("id"),
        image_url=image_url(task, config, image_name, clicks.item_index),
        image_name=image_name,
        clicks=clicks,
        output=output,
        multi=getattr(config.images.get(image_name), "multi", False),
        task=task,
    )
    return PredictRequest(len(tasks), click)


def _prefetch(task: dict[str, Any], label_config: str | None) -> tuple[int | None, Any] | None:
    """The image a task just opened will be clicked on, when its config is interactive (else nothing)."""
    if not label_config:
        return None
    try:
        config = parse_label_config(label_config)
        if not config.images or not config.keypoints:
            return None
        return task.get("id"), image_url(task, config, next(iter(config.images)), 0)
    except BackendError:
        return None


def answer_regions(
    click: ClickRequest,
    encoded: np.ndarray,
    score: float,
    size: tuple[int, int],
    out_size: tuple[int, int],
    continued: str | None,
    polygon_tolerance_px: float,
    polygon_min_area_px: int,
) -> list[dict[str, Any]]:
    """The regions answering ``click``: one brush region (``encoded``: its RLE at ``out_size``), or one polygon per
    part of the mask (``encoded``: the mask's packed bits at ``size``, the frame's); ``continued``: the id of the
    saved region the answer replaces (the largest polygon part takes it)."""
    common = {
        "from_name": click.output.from_name,
        "to_name": click.image_name,
        "label": click.output.label,
        "rotation": click.clicks.image_rotation,
        "score": score,
        "item_index": click.clicks.item_index if click.multi else None,
    }
    width, height = out_size
    if click.output.kind == "brush":
        answer = brush_region(rle=encoded.tolist(), width=width, height=height, **common)
        if continued is not None:  # the editor replaces the region of that id on accepting
            answer["id"] = continued
        return [answer]
    mask = np.unpackbits(encoded, count=size[0] * size[1]).reshape(size[::-1])
    regions = polygon_regions(
        mask=mask.view(bool), tolerance_px=polygon_tolerance_px, min_area_px=polygon_min_area_px, **common
    )
    for polygon in regions:  # points are in percent; the size is the one the labeling UI reported
        polygon["original_width"], polygon["original_height"] = width, height
    if continued is not None and regions:
        regions[0]["id"] = continued
    return regions
