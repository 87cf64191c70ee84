"""Label Studio's JSON export -> YOLO segmentation or COCO instance segmentation (``adaptiveclick export``).

Label Studio cannot export brush masks to YOLO, and a config with a ``KeyPointLabels`` tag (ours) exports no YOLO
lines at all; this converts its plain JSON export instead (docs/export.md):

* Per task, the newest annotation that was not cancelled; ``brushlabels`` (RLE) and ``polygonlabels`` results.
  Other result types (keypoints, choices, ...) are counted and left out.
* Brush masks become polygons with ``ml_backend.masks.polygons`` (one per part, holes filled, specks dropped);
  Label Studio's polygons keep their own vertices.
* YOLO: one line per polygon (a two-part region gives two lines); COCO: one annotation per region, its parts as
  polygons, or uncompressed RLE when a brush mask has holes (polygons would fill them); its ``bbox`` and ``area``
  are those of what the segmentation encodes. ``coco-cvat`` is COCO in the layout CVAT's "COCO 1.0" import and
  datumaro read (``annotations/instances_default.json``, ``images/default/``).
* The export file is untrusted: image references only name a file to look up inside ``--images`` (never a path
  to follow) or a URL fetched through the hardened ``MediaFetcher``; output names are built from the task id and
  a sanitised stem, so nothing is read or written outside the folders given.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import BackendError
from ..jsonbody import NumberTooLarge, loads
from ..masks.polygons import hole_pixels, mask_to_polygons, polygons_to_mask
from .regions import MASK_RESULT_TYPES, RegionError, read_region

FORMATS = ("yolo-seg", "coco", "coco-cvat")
# COCO as CVAT's "COCO 1.0" import (datumaro's coco_instances) reads it: one subset, "default".
CVAT_COCO_FILE, CVAT_IMAGE_DIR = "annotations/instances_default.json", "images/default"
_IMAGE_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")  # Label Studio names uploads "<8 hex>-<original name>"


class ExportError(ValueError):
    """The export (or an option) cannot be converted; the message names what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class Region:
    """One brush or polygon result, in pixels of its image."""

    label: str
    kind: str  # "brush" | "polygon"
    width: int
    height: int
    polygons: tuple[np.ndarray, ...]  # (N, 2) x, y; holes filled; empty when every part was a speck
    mask: np.ndarray  # bool, as annotated (a brush keeps its holes)


@dataclasses.dataclass(frozen=True)
class Task:
    """A task of the export with the result list of its chosen annotation."""

    id: int
    where: str  # "task 12" for messages
    image_ref: str
    results: tuple[dict[str, Any], ...]


@dataclasses.dataclass
class Summary:
    """What an export wrote and what it left out (printed by the command line)."""

    classes: list[str]
    tasks: int = 0
    objects: int = 0  # YOLO lines or COCO annotations
    images: int = 0
    missing_images: list[str] = dataclasses.field(default_factory=list)  # "task 3: why"
    skipped_regions: list[str] = dataclasses.field(default_factory=list)  # "task 3 result[1]: why"
    skipped_results: dict[str, int] = dataclasses.field(default_factory=dict)  # result type -> count


# --- reading the export ----------------------------------------------------------------------------------------


def parse_export(data: bytes, image_key: str | None = None) -> list[Task]:
    """Tasks of a Label Studio JSON export (``exportType=JSON``) that have an annotation that was not cancelled."""
    try:
        raw = loads(data)
    except NumberTooLarge as exc:
        raise ExportError(f"the export is refused: {exc}") from None
    except RecursionError:
        raise ExportError("the export is nested too deeply to be Label Studio's JSON export") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"the export is not JSON ({exc}); export the project as 'JSON' from Label Studio") from None
    if not isinstance(raw, list):
        raise ExportError(
            f"the export must be a list of tasks (Label Studio's 'JSON' export), got a JSON {type(raw).__name__}"
        )
    tasks: list[Task] = []
    seen: set[int] = set()
    for position, task in enumerate(raw):
        if not isinstance(task, dict):
            raise ExportError(f"task at position {position} must be an object, got {type(task).__name__}")
        task_id = task.get("id")
        if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 0:
            raise ExportError(f"task at position {position} has no integer 'id' (is this the 'JSON' export?)")
        if task_id in seen:  # output file names and COCO image ids are per task
            raise ExportError(f"task {task_id} appears twice in the export (position {position})")
        seen.add(task_id)
        where = f"task {task_id}"
        results = _chosen_results(task, where)
        if results is None:
            continue
        tasks.append(Task(task_id, where, _image_ref(task.get("data"), image_key, where), results))
    return tasks


def _chosen_results(task: dict[str, Any], where: str) -> tuple[dict[str, Any], ...] | None:
    """The results of the newest annotation that was not cancelled; None when there is none."""
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise ExportError(f"{where}: 'annotations' must be a list")
    kept = []
    for i, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise ExportError(f"{where}: annotations[{i}] must be an object")
        if annotation.get("was_cancelled"):
            continue
        result = annotation.get("result", [])
        if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
            raise ExportError(f"{where}: annotations[{i}].result must be a list of objects")
        updated = annotation.get("updated_at") or annotation.get("created_at") or ""
        number = annotation.get("id") if isinstance(annotation.get("id"), int) else -1
        kept.append((str(updated), number, i, result))
    if not kept:
        return None
    return tuple(max(kept, key=lambda k: k[:3])[3])


def _image_ref(data: Any, image_key: str | None, where: str) -> str:
    if not isinstance(data, dict):
        raise ExportError(f"{where}: 'data' must be an object")
    if image_key is None:
        strings = [k for k, v in data.items() if isinstance(v, str)]
        image_key = "image" if "image" in data else strings[0] if len(strings) == 1 else None
        if image_key is None:
            raise ExportError(
                f"{where}: cannot tell which of the data keys {sorted(data)} is the image: pass --image-key"
            )
    value = data.get(image_key)
    if not isinstance(value, str) or not value.strip():
        raise ExportError(f"{where}: data.{image_key} must be the image's URL or path")
    return value.strip()


def labels_of(tasks: list[Task]) -> list[str]:
    """The label names of all brush and polygon results, sorted (the class order when none is given)."""
    return sorted({label for task in tasks for label in _result_labels(task)})


def _result_labels(task: Task) -> Iterator[str]:
    for result in task.results:
        rtype = str(result.get("type", "")).lower()
        value = result.get("value")
        if rtype in MASK_RESULT_TYPES and isinstance(value, dict):
            labels = value.get(rtype)
            if isinstance(labels, list) and labels and isinstance(labels[0], str):
                yield labels[0]


def skipped_types(task: Task) -> dict[str, int]:
    """How many of the task's results are neither brush nor polygon, by type (they are left out)."""
    skipped: dict[str, int] = {}
    for result in task.results:
        rtype = str(result.get("type", "")).lower()
        if rtype not in MASK_RESULT_TYPES:
            skipped[rtype or "untyped"] = skipped.get(rtype or "untyped", 0) + 1
    return skipped


def regions_of(
    task: Task,
    *,
    tolerance_px: float,
    min_area_px: int,
    max_pixels: int,
    size: tuple[int, int] | None = None,
    refused: list[str] | None = None,
) -> Iterator[Region]:
    """The task's brush and polygon results as regions, one at a time (a caller that writes each before taking the
    next holds one mask). All must be drawn on ``size`` (the image's shown size), or without it on the size the
    first claims: a region claiming another is named in ``refused`` and left out before it is rasterised."""
    for i, result in enumerate(task.results):
        if str(result.get("type", "")).lower() not in MASK_RESULT_TYPES:
            continue
        where = f"{task.where} result[{i}]"
        try:
            region = read_region(result, where, max_pixels, None if size is None else {size})
        except RegionError as exc:
            if size is None or "drawn on" not in str(exc):
                raise ExportError(str(exc)) from None
            if refused is not None:
                refused.append(str(exc))
            continue
        size = (region.width, region.height)
        if region.points is None:  # a brush: its polygons come from the mask
            polygons = mask_to_polygons(region.mask, tolerance_px=tolerance_px, min_area_px=min_area_px)
        else:
            polygons = [region.points]
        yield Region(region.label, region.kind, region.width, region.height, tuple(polygons), region.mask)


# --- images -------------------------------------------------------------------------------------------------------


def output_stem(task: Task) -> str:
    """``<task id>_<file name>``: unique per task and made only of ``[A-Za-z0-9._-]``, whatever the export says."""
    name = _file_names(task.image_ref)[-1]
    stem = _UNSAFE.sub("_", os.path.splitext(name)[0]).strip("._-")[:80]
    return f"{task.id}_{stem}" if stem else str(task.id)


def _file_names(image_ref: str) -> list[str]:
    """Names to look an image up by, most specific first: local-files ``?d=`` path, file name, upload name."""
    try:
        parts = urllib.parse.urlsplit(image_ref) if not image_ref.startswith("data:") else None
    except ValueError:  # e.g. an unbalanced "[" in the host
        parts = None
    if parts is None:
        return ["image"]
    local = urllib.parse.parse_qs(parts.query).get("d", [""])[0]
    base = (local or urllib.parse.unquote(parts.path)).replace("\\", "/").rsplit("/", 1)[-1]
    upload = _UPLOAD_PREFIX.match(base)
    names = [local, base, upload.group(1) if upload else ""]
    return [n for n in dict.fromkeys(names) if n] or ["image"]


def local_images(root: str | Path, max_bytes: int) -> Callable[[Task], bytes]:
    """Reads a task's image from inside ``root`` only: the export's reference is a name to look up there."""
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise ExportError(f"--images {root}: not a folder")

    def read(task: Task) -> bytes:
        for name in _file_names(task.image_ref):
            if "\x00" in name:
                continue
            path = os.path.realpath(os.path.join(real_root, name.lstrip("/")))
            if os.path.commonpath([real_root, path]) != real_root or not os.path.isfile(path):
                continue
            if os.path.getsize(path) > max_bytes:
                raise ExportError(f"{task.where}: {name} is larger than MAX_IMAGE_MB")
            return Path(path).read_bytes()
        raise FileNotFoundError(f"no file named {_file_names(task.image_ref)[-1]!r} in {root}")

    return read


def image_format(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """The file extension and the (width, height) as shown (EXIF orientation applied) of an image we copy;
    ``ExportError`` when the bytes are not an image in a format training code reads, or do not decode (the
    backend's decoder and limits: a corrupt file is named and skipped, never copied)."""
    from PIL import Image

    from ..media.fetcher import decode_image

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except Exception:  # any failure of Pillow's format sniffing: not an image we copy
        fmt = None
    if fmt not in _IMAGE_EXTENSIONS:
        raise ExportError(f"not an image in a format training code reads ({fmt or 'unknown'})")
    try:
        decoded = decode_image(data, max_pixels, what="the image")
    except BackendError as exc:
        raise ExportError(exc.message) from None
    return _IMAGE_EXTENSIONS[fmt], decoded.size  # Label Studio's original_width/height are after EXIF rotation


# --- writing ------------------------------------------------------------------------------------------------------


def export_dataset(
    tasks: list[Task],
    out: str | Path,
    *,
    fmt: str,
    settings: Settings,
    classes: list[str] | None = None,
    read_image: Callable[[Task], bytes] | None = None,
    tolerance_px: float | None = None,
) -> Summary:
    """Write ``tasks`` as a YOLO segmentation dataset or a COCO instance segmentation file under ``out``.

    ``out`` must be absent or empty; it is written in a sibling temporary folder and moved into place at the end,
    so an export that fails half-way leaves nothing behind. ``read_image`` returns a task's image bytes
    (``local_images``, ``fetched_images``); without it only labels are written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_symlink():  # the folder is replaced at the end by a rename, which a link cannot take part in
        target = os.readlink(out)
        state = "an empty folder" if out.is_dir() and not any(out.iterdir()) else "nothing" if not out.exists() else ""
        raise ExportError(
            f"--out {out} is a symbolic link (to {target}{', ' + state if state else ''}): give the folder itself"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty folder: give a new or empty folder")
    found = labels_of(tasks)
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ExportError(f"labels {unknown} are not in the class list {classes}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _write(tasks, staging, out.resolve(), fmt, settings, classes, read_image, tolerance_px)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write(
    tasks: list[Task],
    folder: Path,
    final: Path,
    fmt: str,
    settings: Settings,
    classes: list[str],
    read_image: Callable[[Task], bytes] | None,
    tolerance_px: float | None,
) -> Summary:
    index = {name: i for i, name in enumerate(classes)}
    tolerance = settings.polygon_tolerance_px if tolerance_px is None else tolerance_px
    image_dir = folder / {"yolo-seg": "images/train", "coco": "images", "coco-cvat": CVAT_IMAGE_DIR}[fmt]
    label_dir = folder / "labels/train"
    image_dir.mkdir(parents=True)
    if fmt == "yolo-seg":
        label_dir.mkdir(parents=True)
    summary = Summary(classes=list(classes))
    # "info" and "licenses" as COCO itself and CVAT's export have them: datumaro's streaming COCO reader (what CVAT's
    # import uses) refuses a file without the licenses section.
    coco: dict[str, Any] = {"info": {}, "licenses": [], "images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(classes)]
    for task in tasks:
        for rtype, count in skipped_types(task).items():
            summary.skipped_results[rtype] = summary.skipped_results.get(rtype, 0) + count
        file_name, image_size = _copy_image(task, image_dir, read_image, summary, settings.max_image_pixels)
        regions = regions_of(
            task,
            tolerance_px=tolerance,
            min_area_px=settings.polygon_min_area_px,
            max_pixels=settings.max_image_pixels,
            size=image_size,
            refused=summary.skipped_regions,
        )
        summary.tasks += 1
        if fmt == "yolo-seg":
            lines = [_yolo_line(index[r.label], p, r.width, r.height) for r in regions for p in r.polygons]
            (label_dir / f"{output_stem(task)}.txt").write_text("".join(f"{line}\n" for line in lines))
            summary.objects += len(lines)
            continue
        size = image_size
        for region in regions:  # each region's mask is dropped once its annotation is made
            size = size or (region.width, region.height)
            annotation = _coco_annotation(region, settings.polygon_min_area_px)
            if annotation is not None:
                annotation.update(id=len(coco["annotations"]) + 1, image_id=task.id)
                annotation["category_id"] = index[region.label] + 1
                coco["annotations"].append(annotation)
        if size is not None:  # a task with no region and no image cannot be sized: COCO leaves it out
            coco["images"].append({"id": task.id, "file_name": file_name, "width": size[0], "height": size[1]})
    if fmt == "yolo-seg":
        (folder / "data.yaml").write_text(_data_yaml(final, classes))
    else:
        summary.objects = len(coco["annotations"])
        path = folder / (CVAT_COCO_FILE if fmt == "coco-cvat" else "annotations.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(coco))
    return summary


def _copy_image(
    task: Task, image_dir: Path, read_image: Callable[[Task], bytes] | None, summary: Summary, max_pixels: int
) -> tuple[str, tuple[int, int] | None]:
    """Copy the task's image as ``<stem><ext>``: its file name and shown size; when it cannot be copied, the
    name it would have (the reference's extension) and None."""
    stem = output_stem(task)
    guessed = os.path.splitext(_file_names(task.image_ref)[-1])[1].lower()
    guessed = guessed if guessed in set(_IMAGE_EXTENSIONS.values()) | {".jpeg", ".tiff"} else ".jpg"
    if read_image is None:
        return f"{stem}{guessed}", None
    try:
        data = read_image(task)
        extension, size = image_format(data, max_pixels)
    except (OSError, ExportError, BackendError) as exc:
        name = _file_names(task.image_ref)[-1][:80]
        summary.missing_images.append(f"{task.where} ({name}): {getattr(exc, 'message', None) or exc}")
        return f"{stem}{guessed}", None
    (image_dir / f"{stem}{extension}").write_bytes(data)
    summary.images += 1
    return f"{stem}{extension}", size


def _yolo_line(class_index: int, points: np.ndarray, width: int, height: int) -> str:
    normalised = np.clip(points / np.array([width, height], np.float64), 0.0, 1.0)
    return f"{class_index} " + " ".join(f"{x:.6f} {y:.6f}" for x, y in normalised)


def _coco_annotation(region: Region, min_area_px: int) -> dict[str, Any] | None:
    """Segmentation (polygons, or RLE for a brush mask with holes), and the bbox and area of exactly what the
    segmentation encodes (the dropped specks are in neither: a detector takes the box as truth); None for an
    empty region."""
    if not region.mask.any():
        return None
    if region.kind == "brush" and hole_pixels(region.mask) >= min_area_px:
        segmentation: Any = {"size": [region.height, region.width], "counts": uncompressed_rle(region.mask)}
        encoded = region.mask
    elif region.polygons:
        rounded = [np.round(p.astype(np.float64), 2) for p in region.polygons]
        segmentation = [[float(c) for c in p.reshape(-1)] for p in rounded]
        encoded = polygons_to_mask(rounded, region.height, region.width)  # pixel centres, as COCO readers fill
    else:
        return None
    rows, cols = np.nonzero(encoded)
    if not rows.size:  # polygons too thin to cover a pixel centre
        return None
    x0, y0 = int(cols.min()), int(rows.min())
    bbox = [x0, y0, int(cols.max()) + 1 - x0, int(rows.max()) + 1 - y0]
    return {"segmentation": segmentation, "bbox": bbox, "area": int(rows.size), "iscrowd": 0}


def uncompressed_rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a (maybe empty) 0 run."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def _data_yaml(out: Path, classes: list[str]) -> str:
    # JSON strings are valid YAML double-quoted scalars: label names with ':' or quotes stay intact.
    names = "".join(f"  {i}: {json.dumps(name)}\n" for i, name in enumerate(classes))
    return (
        f"path: {json.dumps(str(out.resolve()))}\n"
        "train: images/train\n"
        "val: images/train  # one split: hold some images out yourself\n"
        f"names:\n{names}"
    )


# --- Label Studio's API -------------------------------------------------------------------------------------------


def download_project_export(settings: Settings, project: int) -> bytes:
    """``GET /api/projects/{id}/export?exportType=JSON`` from ``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY``,
    through the fetcher's checked redirects (Label Studio's origin only, at most 5 hops), at most
    ``EXPORT_MAX_MB`` and within ``EXPORT_TIMEOUT_S`` for the whole download."""
    from ..media.fetcher import MediaFetcher

    if not settings.label_studio_api_key:
        raise ExportError("--project needs LABEL_STUDIO_API_KEY (Account & Settings > Personal Access Token)")
    path = f"/api/projects/{int(project)}/export?exportType=JSON&download_all_tasks=false"

    def status_message(status: int) -> str:
        if status in (401, 403):
            return (
                f"Label Studio refused LABEL_STUDIO_API_KEY ({status}): check the token and its access to project "
                f"{project}"
            )
        if status == 404:
            return f"Label Studio has no project {project} (404 from {path.split('?')[0]})"
        return f"Label Studio answered {status} to {path}"

    fetcher = MediaFetcher(settings)
    try:
        return fetcher.get_label_studio(
            path,
            max_bytes=settings.export_max_bytes,
            timeout_s=settings.export_timeout_s,
            status_message=status_message,
        )
    except BackendError as exc:
        raise ExportError(exc.message) from None


def fetched_images(settings: Settings) -> Callable[[Task], bytes]:
    """Reads a task's image through ``MediaFetcher``: Label Studio's media with its auth, other hosts only as
    ``MEDIA_ALLOWED_HOSTS`` allows (the export's URLs are untrusted)."""
    from ..media.fetcher import MediaFetcher

    fetcher = MediaFetcher(settings)
    return lambda task: fetcher.fetch(task.image_ref, task.id)
