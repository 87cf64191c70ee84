"""The labeling config and the regions: which tags to read clicks from and to write masks (brush or polygon) to.

Parsing uses ``label_studio_sdk.label_interface.LabelInterface``; parsed configs are cached by their text.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import uuid
from typing import Any

from ..errors import BadRequest, ConfigError

log = logging.getLogger("adaptiveclick.backend")


@dataclasses.dataclass(frozen=True)
class ImageTag:
    name: str
    data_key: str  # "image" for value="$image"
    multi: bool  # valueList


@dataclasses.dataclass(frozen=True)
class ControlTag:
    name: str
    to_name: tuple[str, ...]
    labels: tuple[str, ...]
    smart: bool


@dataclasses.dataclass(frozen=True)
class OutputTag:
    """The control tag a click's answer is written to: its kind (``brush`` or ``polygon``), name and label."""

    kind: str
    from_name: str
    label: str


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    images: dict[str, ImageTag]
    keypoints: dict[str, ControlTag]
    brushes: dict[str, ControlTag]
    polygons: dict[str, ControlTag] = dataclasses.field(default_factory=dict)
    rectangles: dict[str, ControlTag] = dataclasses.field(default_factory=dict)  # smart ones give box prompts

    def output_for(self, image_name: str, label: str, prefer: str = "brush") -> OutputTag:
        """The BrushLabels or PolygonLabels tag on ``image_name`` with ``label`` (exactly, else ignoring case):
        the answer's type follows the tag the clicked label belongs to; ``prefer`` decides when both have it.

        Raises ``ConfigError`` with what to add to the config when none matches."""
        tags = [("brush", b) for b in self.brushes.values() if image_name in b.to_name]
        tags += [("polygon", g) for g in self.polygons.values() if image_name in g.to_name]
        found = []
        for kind, tag in tags:
            exact = [x for x in tag.labels if x == label]
            loose = [x for x in tag.labels if x.strip().lower() == label.strip().lower()]  # "object" for "Object"
            if exact or loose:
                found.append(OutputTag(kind, tag.name, (exact or loose)[0]))
        if found:
            return next((t for t in found if t.kind == prefer), found[0])
        if not tags:
            raise ConfigError(
                f'the labeling config has no <BrushLabels toName="{image_name}"> (or PolygonLabels): add '
                f'<BrushLabels name="tag" toName="{image_name}"><Label value="{label}"/></BrushLabels> '
                "(or the same PolygonLabels tag, for polygons) so the backend has a tag to answer with"
            )
        names = ", ".join(f"{tag.name}: {list(tag.labels)}" for _, tag in tags)
        kind = "BrushLabels" if tags[0][0] == "brush" else "PolygonLabels"
        raise ConfigError(
            f'the keypoint label "{label}" has no BrushLabels or PolygonLabels label of the same name on image '
            f'"{image_name}" ({names}); add <Label value="{label}"/> to the {kind} tag'
        )

    def problems(self) -> list[str]:
        """Human-readable reasons why interactive segmentation will not work with this config."""
        out = []
        if not self.images:
            out.append("the labeling config has no <Image> tag")
        smart = [k for k in [*self.keypoints.values(), *self.rectangles.values()] if k.smart]
        if not self.keypoints and not self.rectangles:
            out.append('the labeling config has no <KeyPointLabels smart="true"> tag to click with')
        elif not smart:
            out.append('no KeyPointLabels tag has smart="true": the labeling UI will not send clicks to the backend')
        if not self.brushes and not self.polygons:
            out.append("the labeling config has no <BrushLabels> or <PolygonLabels> tag for the masks")
        for kp in [*self.keypoints.values(), *(r for r in self.rectangles.values() if r.smart)]:
            for image_name in kp.to_name:
                for label in kp.labels:
                    try:
                        self.output_for(image_name, label)
                    except ConfigError as exc:
                        out.append(exc.message)
        return out


def project_id(value: Any) -> str:
    """Label Studio's project as requests and webhooks give it (an object with ``id``, an int, or "12.1718...":
    the id, a dot and a timestamp) as a string of digits; "" when it cannot be read."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value) if value >= 0 else ""
    if isinstance(value, str):
        head = value.split(".", 1)[0].strip()
        return head if head.isdigit() and len(head) < 20 else ""
    return ""


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


@functools.lru_cache(maxsize=64)
def parse_label_config(config: str) -> LabelConfig:
    """Parse a labeling config (cached by its text). Raises ``BadRequest`` when it is not a valid config."""
    from label_studio_sdk.label_interface import LabelInterface

    if not isinstance(config, str) or not config.strip():
        raise BadRequest("label_config is empty: the request must carry the project's labeling config")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # lxml / SDK errors of many kinds
        raise BadRequest(f"label_config is not a valid Label Studio config: {exc}") from None
    images: dict[str, ImageTag] = {}
    for obj in interface.objects:
        if obj.tag.lower() != "image":
            continue
        value = obj.attr.get("valueList") or obj.attr.get("valuelist")
        multi = bool(value)
        value = value or obj.attr.get("value") or ""
        images[obj.name] = ImageTag(obj.name, str(value).lstrip("$"), multi)
    keypoints: dict[str, ControlTag] = {}
    brushes: dict[str, ControlTag] = {}
    polygons: dict[str, ControlTag] = {}
    rectangles: dict[str, ControlTag] = {}
    for control in interface.controls:
        tag = control.tag.lower()
        if tag not in ("keypointlabels", "rectanglelabels", "brushlabels", "polygonlabels"):
            continue
        labels = tuple(getattr(control, "labels", None) or ())
        to_name = tuple(control.to_name or ())
        if tag in ("keypointlabels", "rectanglelabels"):
            label_attrs = getattr(control, "labels_attrs", None) or {}
            smart = _truthy(control.attr.get("smart", "false")) or any(
                _truthy(getattr(attr, "attr", {}).get("smart", "false")) for attr in label_attrs.values()
            )
            prompts = keypoints if tag == "keypointlabels" else rectangles
            prompts[control.name] = ControlTag(control.name, to_name, labels, smart)
        else:
            outputs = brushes if tag == "brushlabels" else polygons
            outputs[control.name] = ControlTag(control.name, to_name, labels, False)
    return LabelConfig(images, keypoints, brushes, polygons, rectangles)


@dataclasses.dataclass(frozen=True)
class RawClick:
    """One keypoint region as the labeling UI sent it (percent coordinates)."""

    x: float
    y: float
    positive: bool
    label: str
    from_name: str
    to_name: str
    original_width: int | None
    original_height: int | None
    image_rotation: int
    item_index: int
    box: tuple[float, float, float, float] | None = None  # a smart rectangle: x, y, width, height (percent)


@dataclasses.dataclass(frozen=True)
class ClickSet:
    """The clicks of one object: same image, label and frame, in order; ``box``: the smart rectangle it starts
    from (x, y, width, height in percent), if the request has one."""

    clicks: tuple[RawClick, ...]
    label: str
    from_name: str
    to_name: str
    original_width: int | None
    original_height: int | None
    image_rotation: int
    item_index: int
    box: tuple[float, float, float, float] | None = None


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return True  # missing is_positive = positive (older UIs)
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(value)


def _polarity(region: dict[str, Any], value: dict[str, Any]) -> bool:
    """A click's polarity: the open-source editor sends ``is_positive`` on the region, the enterprise interactive
    backend reads ``value.positive``; either is accepted (the region's first), and missing means positive."""
    if "is_positive" in region:
        return _as_bool(region["is_positive"])
    return _as_bool(value.get("positive"))


def _as_int(value: Any, what: str, minimum: int | None = None) -> int | None:
    if value is None:
        return None
    number_int = int(round(_as_float(value, what)))
    if minimum is not None and number_int < minimum:
        raise BadRequest(f"{what} must be >= {minimum}, got {value!r}")
    return number_int


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"{what} must be a number, got {type(value).__name__ if value is not None else 'null'}")
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{what} must be a finite number, got {value!r}")
    return number


def extract_clicks(context_result: Any, config: LabelConfig) -> ClickSet | None:
    """The smart keypoint clicks of ``params.context.result``.

    Keeps region order; missing ``is_positive`` = positive; keeps the clicks of the label of the last click
    (the UI sends one label at a time). Returns ``None`` when there is no keypoint region."""
    if context_result is None:
        return None
    if not isinstance(context_result, list):
        raise BadRequest(f"params.context.result must be a list of regions, got {type(context_result).__name__}")
    raw: list[RawClick] = []
    for i, region in enumerate(context_result):
        where = f"params.context.result[{i}]"
        if not isinstance(region, dict):
            raise BadRequest(f"{where} must be an object, got {type(region).__name__}")
        value = region.get("value")
        if not isinstance(value, dict):
            raise BadRequest(f"{where}.value must be an object")
        rtype = str(region.get("type") or "").lower()
        from_name = region.get("from_name")
        is_keypoint = rtype in ("keypointlabels", "keypoint") or (not rtype and "keypointlabels" in value)
        is_box = rtype == "rectanglelabels" or (not rtype and "rectanglelabels" in value)
        if not is_keypoint and not is_box:
            continue  # polygons, brushes, ...: not a prompt
        if from_name is not None and not isinstance(from_name, str):
            raise BadRequest(f"{where}.from_name must be a string")
        if is_box and not any(r.smart for r in config.rectangles.values()):
            continue  # an ordinary rectangle: only a smart RectangleLabels tag's boxes are prompts
        tags = config.keypoints if is_keypoint else config.rectangles
        if from_name and (tags or is_box) and from_name not in tags:
            log.warning("ignoring the region from %r: not a KeyPointLabels or RectangleLabels tag", from_name)
            continue
        labels_key = "keypointlabels" if is_keypoint else "rectanglelabels"
        labels = value.get(labels_key) or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise BadRequest(f"{where}.value.{labels_key} must be a list of strings")
        box = None
        if is_box:
            box = tuple(_as_float(value.get(k), f"{where}.value.{k}") for k in ("x", "y", "width", "height"))
            if box[2] <= 0 or box[3] <= 0:
                raise BadRequest(f"{where}.value has an empty rectangle (width {box[2]}, height {box[3]})")
        to_name = region.get("to_name")
        if to_name is not None and not isinstance(to_name, str):
            raise BadRequest(f"{where}.to_name must be a string")
        item_index = _as_int(region.get("item_index", 0), f"{where}.item_index", minimum=0) or 0
        raw.append(
            RawClick(
                x=_as_float(value.get("x"), f"{where}.value.x"),
                y=_as_float(value.get("y"), f"{where}.value.y"),
                positive=_polarity(region, value),
                label=labels[0] if labels else "",
                from_name=from_name or "",
                to_name=to_name or "",
                original_width=_as_int(region.get("original_width"), f"{where}.original_width", minimum=1),
                original_height=_as_int(region.get("original_height"), f"{where}.original_height", minimum=1),
                image_rotation=(_as_int(region.get("image_rotation", 0) or 0, f"{where}.image_rotation") or 0) % 360,
                item_index=item_index,
                box=box,
            )
        )
    if not raw:
        return None
    last = raw[-1]
    same = [c for c in raw if (c.label, c.to_name, c.item_index) == (last.label, last.to_name, last.item_index)]
    if len(same) != len(raw):
        log.info("context has clicks of several labels/images; using the %d of label %r", len(same), last.label)
    # Unlabelled keypoints: take the tag's only label when there is one.
    label = last.label
    tags = {**config.keypoints, **config.rectangles}
    from_name = last.from_name or next(iter(config.keypoints), "")
    if not label:
        tag = tags.get(from_name)
        if tag is not None and len(tag.labels) == 1:
            label = tag.labels[0]
    to_name = last.to_name
    if not to_name:
        tag = tags.get(from_name)
        to_name = tag.to_name[0] if tag is not None and tag.to_name else next(iter(config.images), "")
    boxes = [c.box for c in same if c.box is not None]
    return ClickSet(
        box=boxes[-1] if boxes else None,
        clicks=tuple(c for c in same if c.box is None),
        label=label,
        from_name=from_name,
        to_name=to_name,
        original_width=last.original_width,
        original_height=last.original_height,
        image_rotation=last.image_rotation,
        item_index=last.item_index,
    )


def brush_region(
    *,
    rle: list[int],
    from_name: str,
    to_name: str,
    label: str,
    width: int,
    height: int,
    rotation: int,
    score: float,
    item_index: int | None = None,
) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": int(rotation),
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
        "score": float(score),
        "readonly": False,
    }
    if item_index is not None:  # multi-image tasks only
        region["item_index"] = int(item_index)
    return region
