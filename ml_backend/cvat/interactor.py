"""The CVAT adapter: CVAT's interactor request in, CVAT's ``shapes`` reply out, on the platform-neutral core.

CVAT (``../shared/docs/cvat.md``) sends, on every click, the frame as base64 bytes and *all* current clicks as two
lists, ``pos_points`` and ``neg_points`` (``[x, y]`` image pixels), with no session, no object id and no previous
mask. So the object is keyed by the image bytes (their sha256), and the click set is ordered by the core
(``sessions.order_clicks``): it continues the longest click sequence already computed for this image whose clicks
are all in the set; the set's other clicks follow, **positives before negatives, each in the order CVAT lists
them**, and run in one forward. One new click per request is therefore exactly ``adaptiveclick predict`` with the
clicks in the order they were made; a removed click continues from the longest sequence without it.

The reply is CVAT's current format (v2.60+): ``mask`` shapes whose points are CVAT's integer RLE over the shape's
tight bounding box followed by the box, and a confidence as a string attribute with ``spec_id`` 0. **One shape per
part of the mask**, as CVAT's UI sees parts: with "Convert masks to polygons" it keeps only the longest outline of
each shape, so one shape holding two parts would lose one. The confidence is on the scale of CVAT's slider, whose
default (0.5) hides what is below it: 0.5 is the mask threshold, 1 a mask of certain pixels. The function's
description (what ``function.yaml`` declares and what the dashboard routes list) is defined here once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
from typing import Any

import cv2
import numpy as np

from ..errors import BackendError, BadRequest, MediaError
from ..interactive.core import Frame, InteractiveCore, image_key
from ..interactive.sessions import BoxPrompt, Click, RunStats, box_prompt
from ..jsonbody import check_numbers, parse_json
from ..media.fetcher import DecodedImage, decode_image

log = logging.getLogger("adaptiveclick.backend")

FUNCTION_NAME = "pth-adaptiveclick"
# nuclio keeps annotations as strings; CVAT converts them with int() / bool() (``bool("false")`` is True, so a
# key that must be false is left out, never written "false").
FUNCTION_ANNOTATIONS: dict[str, str] = {
    "name": "AdaptiveClick",
    "type": "interactor",
    "version": "2",
    "spec": "",
    "framework": "pytorch",
    # 0: the UI sends a box as soon as it is drawn (with 1 it waits for a positive click and sends both at once).
    "min_pos_points": "0",
    "min_neg_points": "0",
    # "Start with a bounding box" is then on by default in CVAT's UI: the first two left-clicks draw a box.
    "startswith_box_optional": "true",
    "help_message": (
        "AdaptiveClick. With 'Start with a bounding box' on (the default), left-click two opposite corners of a box "
        "around the object: the box gives a mask. Then left-click on what is missing, right-click on what should "
        "not be there; each click refines the previous mask. 'N' (Done) saves it. With the box option off, start "
        "with a left-click inside the object."
    ),
    "animated_gif": "",
}
FUNCTION_DESCRIPTION = "AdaptiveClick interactive segmentation (click-aware ViT; keeps its previous mask)"


def function_info(state: str) -> dict[str, Any]:
    """The function as the nuclio dashboard describes it (``GET /api/functions/<name>``), with its ``state``."""
    return {
        "metadata": {"name": FUNCTION_NAME, "annotations": dict(FUNCTION_ANNOTATIONS)},
        "spec": {"description": FUNCTION_DESCRIPTION, "handler": "main:handler", "runtime": "python"},
        "status": {"state": state},
    }


def encode_cvat_mask(mask: np.ndarray, left: int = 0, top: int = 0) -> np.ndarray:
    """Bool mask -> CVAT's mask points: run lengths over the tight bounding box (row-major, starting with a run of
    zeros, possibly 0), then ``left, top, right, bottom`` (inclusive). Empty mask -> an empty array. ``left`` and
    ``top``: where ``mask`` (a crop) lies in the frame."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    flat = mask[y0 : y1 + 1, x0 : x1 + 1].ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return np.concatenate((runs, [left + x0, top + y0, left + x1, top + y1])).astype(np.int64)


def _part_crops(mask: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """The parts of a bool mask as CVAT's UI outlines them, largest first, each as ``(its pixels within its box,
    left, top)``: CVAT dilates a mask by a 2x2 kernel before taking external contours, so pixels one pixel apart are
    one part (one outline, one polygon). Every pixel of the mask is in exactly one part. Crops, so that a mask of
    many parts costs one pass over the frame, not one per part."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2, 2), np.uint8), anchor=(1, 1), borderValue=0)
    count, labels = cv2.connectedComponents(grown, connectivity=8)
    if count <= 2:  # the common case, one part: no boxes needed
        return [(mask, 0, 0)] if mask.any() else []
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    labels = np.where(mask, labels, 0)
    sizes = np.bincount(labels.ravel(), minlength=count)
    order = [int(i) for i in np.argsort(-sizes[1:], kind="stable") + 1 if sizes[i] > 0]
    crops = []
    for i in order:  # the grown part's box holds the part: the dilation keeps every pixel it grows from
        left, top, width, height = (int(v) for v in boxes[i, :4])
        crops.append((labels[top : top + height, left : left + width] == i, left, top))
    return crops


def mask_parts(mask: np.ndarray) -> list[np.ndarray]:
    """The parts of a bool mask as CVAT's UI outlines them (:func:`_part_crops`), each a mask of the frame."""
    parts = []
    for crop, left, top in _part_crops(mask):
        part = np.zeros(mask.shape, dtype=bool)
        part[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        parts.append(part)
    return parts


def encode_cvat_shapes(mask: np.ndarray) -> np.ndarray:
    """Bool mask -> CVAT's points of each part (:func:`mask_parts`), packed in one integer array as
    ``[n, *points of part 1]`` repeated (``n`` the number of points), so the core caches it like any encoding."""
    packed = []
    for crop, left, top in _part_crops(mask):
        points = encode_cvat_mask(crop, left, top)
        packed.append(np.concatenate(([points.size], points)))
    return np.concatenate(packed).astype(np.int64) if packed else np.zeros(0, dtype=np.int64)


def unpack_shapes(packed: np.ndarray) -> list[list[int]]:
    """The per-part points :func:`encode_cvat_shapes` packed."""
    out, i = [], 0
    while i < packed.size:
        n = int(packed[i])
        out.append(packed[i + 1 : i + 1 + n].tolist())
        i += 1 + n
    return out


def slider_confidence(score: float, threshold: float) -> float:
    """The model's score (mean probability inside the mask, >= the mask threshold) on CVAT's confidence slider:
    the threshold maps to 0.5, certainty to 1. CVAT's slider (default 0.5) hides a shape below it, and "Done"
    then saves nothing; a mask we answer passed the threshold, so it must show at the default."""
    threshold = min(max(threshold, 0.0), 0.999)
    return min(1.0, max(0.5, 0.5 + 0.5 * (score - threshold) / (1.0 - threshold)))


def shapes_reply(parts: list[list[int]], confidence: float) -> dict[str, Any]:
    """CVAT's reply: one ``mask`` shape per part (points as :func:`encode_cvat_mask` gives them), each with the
    confidence; no shape when the mask is empty (CVAT treats fewer than 6 numbers as empty)."""
    return {
        "shapes": [
            {"type": "mask", "points": points, "attributes": [{"spec_id": 0, "value": f"{confidence:.4f}"}]}
            for points in parts
            if len(points) >= 6
        ]
    }


def _points(value: Any, name: str, size: tuple[int, int]) -> list[Click]:
    """``[[x, y], ...]`` image pixels -> ``(row, col, positive)`` clicks; 422 naming the bad point."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of [x, y] points, got {type(value).__name__}")
    width, height = size
    positive = name == "pos_points"
    out = []
    for i, point in enumerate(value):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise BadRequest(f"{name}[{i}] must be an [x, y] pair, got {str(point)[:60]}")
        x, y = point
        for axis, v in (("x", x), ("y", y)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BadRequest(f"{name}[{i}].{axis} must be a finite number, got {str(v)[:40]}")
        # A click on the last pixel's far edge (x == width) is still that pixel; anything beyond is not on the image.
        if not (0 <= x <= width and 0 <= y <= height):
            raise BadRequest(f"{name}[{i}] = [{x}, {y}] is outside the {width}x{height} image")
        out.append((min(int(y), height - 1), min(int(x), width - 1), positive))
    return out


def _box(value: Any, size: tuple[int, int]) -> BoxPrompt | None:
    """CVAT's ``obj_bbox`` (``[[x1, y1], [x2, y2]]`` image pixels, any two opposite corners; ``[]`` or null: no
    box) as a box prompt; 422 naming what is wrong."""
    if value is None or value == []:
        return None
    corners = _points(value, "obj_bbox", size) if isinstance(value, list) and len(value) == 2 else None
    if corners is None:
        raise BadRequest(f"obj_bbox must be [] or two [x, y] corners, got {str(value)[:80]}")
    (r0, c0, _), (r1, c1, _) = corners
    if r0 == r1 or c0 == c1:
        raise BadRequest(f"obj_bbox {value} is empty: its corners must differ in x and in y")
    (x0, x1), (y0, y1) = sorted(p[0] for p in value), sorted(p[1] for p in value)
    return box_prompt(x0, y0, x1, y1)


def _image_bytes(value: Any, max_bytes: int) -> bytes:
    if value is None:
        raise BadRequest('the body has no "image": CVAT sends the frame as a base64 string')
    if not isinstance(value, str):
        raise BadRequest(f'"image" must be a base64 string, got {type(value).__name__}')
    head, comma, rest = value.partition(",")
    text = rest if comma and head.startswith("data:") and head.endswith(";base64") else value  # a data URI's payload
    if len(text) * 3 // 4 > max_bytes:
        raise MediaError(f"the image is above MAX_IMAGE_MB={max_bytes // 2**20}", status=413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"image" is not valid base64') from None
    if not data:
        raise BadRequest('"image" is empty')
    return data


class CvatInteractor:
    """CVAT's interactor calls on an :class:`InteractiveCore` (shared with the Label Studio adapter in a server)."""

    def __init__(self, core: InteractiveCore):
        self.core = core
        self.calls = 0

    def state(self) -> str:
        """The function's nuclio state: ``ready`` once the model is loaded."""
        engine = self.core.engine
        if engine.error:
            return "error"
        return "ready" if engine.ready.is_set() else "building"

    def invoke(self, body: Any, stats: RunStats | None = None) -> dict[str, Any]:
        """Answer one interactor call (a parsed JSON body); raises ``BackendError``s with a message."""
        stats = stats or RunStats()
        if isinstance(body, (bytes, bytearray)):
            body = parse_json(bytes(body))
        else:  # nuclio decodes application/json itself: bound its integers as parse_json does
            check_numbers(body)
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with image, pos_points and neg_points")
        settings = self.core.settings
        data = _image_bytes(body.get("image"), settings.max_image_bytes)
        key = image_key("sha256:" + hashlib.sha256(data).hexdigest())

        def decode() -> DecodedImage:
            return decode_image(data, settings.max_image_pixels, what="the image")

        decoded = self.core.image(key, decode, stats)
        return self.answer(key[1], decoded, body.get("pos_points"), body.get("neg_points"), body.get("obj_bbox"), stats)

    def answer(
        self,
        image_id: str,
        decoded: DecodedImage,
        pos_points: Any,
        neg_points: Any,
        obj_bbox: Any,
        stats: RunStats | None = None,
    ) -> dict[str, Any]:
        """CVAT's reply for prompts on a decoded image named ``image_id`` (its content hash: the object's key
        across calls); the prompts as CVAT sends them (``[[x, y], ...]``, ``obj_bbox`` two corners or empty)."""
        stats = stats or RunStats()
        positives = _points(pos_points, "pos_points", decoded.size)
        negatives = _points(neg_points, "neg_points", decoded.size)
        box = _box(obj_bbox, decoded.size)
        if not positives and box is None:
            # A right-click first with the box option off, or the last positive click removed (min_pos_points 0
            # lets the UI send both): nothing is the object, which is an answer, not an error notification.
            return {"shapes": []}
        # A box starts its own object (it is the first item of every click sequence of that object).
        prompts = ([box] if box else []) + list(dict.fromkeys(positives + negatives))
        frame = Frame.of(decoded)
        object_key = ("cvat", image_id, box)
        result = self.core.segment(object_key, frame, prompts, encode_cvat_shapes, stats, ordered=False)
        self.calls += 1
        return shapes_reply(unpack_shapes(result.encoded), slider_confidence(result.score, self._threshold(object_key)))

    def _threshold(self, object_key: Any) -> float:
        """The mask threshold of the object's predictor (``MASK_THRESHOLD`` or the model's own)."""
        if self.core.settings.mask_threshold is not None:
            return self.core.settings.mask_threshold
        session = self.core.cache.get_session(object_key)
        return float(getattr(session.predictor, "threshold", 0.5)) if session is not None else 0.5

    def handle(self, body: Any, stats: RunStats | None = None) -> tuple[int, dict[str, Any]]:
        """``(status, JSON reply)`` for a call: the shapes, or ``{"error": message}`` with a 4xx/5xx."""
        try:
            return 200, self.invoke(body, stats)
        except BackendError as exc:
            level = logging.WARNING if exc.status < 500 else logging.ERROR
            log.log(level, "CVAT call -> %d: %s", exc.status, exc.message)
            return exc.status, {"error": exc.message}
        except Exception as exc:
            log.exception("CVAT call failed")
            return 500, {"error": f"internal error ({type(exc).__name__}); see the function's log"}
