"""The CVAT adapter: CVAT's interactor request in, CVAT's ``shapes`` reply out, on the platform-neutral core.

CVAT (``../shared/docs/cvat.md``) sends, on every click, the frame as base64 bytes and *all* current clicks as two
lists, ``pos_points`` and ``neg_points`` (``[x, y]`` image pixels), with no session, no object id and no previous
mask. So the object is keyed by the image bytes (their sha256), and the click set is ordered by the core
(``sessions.order_clicks``): it continues the longest click sequence already computed for this image whose clicks
are all in the set; the set's other clicks follow, **positives before negatives, each in the order CVAT lists
them**, and run in one forward. One new click per request is therefore exactly ``adaptiveclick predict`` with the
clicks in the order they were made; a removed click continues from the longest sequence without it.

The reply is CVAT's current format (v2.60+): one ``mask`` shape whose points are CVAT's integer RLE over the
mask's tight bounding box followed by the box, and the score as a string attribute with ``spec_id`` 0. The
function's description (what ``function.yaml`` declares and what the dashboard routes list) is defined here once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
from typing import Any

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
    "min_pos_points": "1",
    "min_neg_points": "0",
    "startswith_box_optional": "true",
    "help_message": (
        "AdaptiveClick: left-click inside the object (or draw a box around it first), right-click on what should "
        "not be in it; each click refines the previous mask"
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


def encode_cvat_mask(mask: np.ndarray) -> np.ndarray:
    """Bool mask -> CVAT's mask points: run lengths over the tight bounding box (row-major, starting with a run of
    zeros, possibly 0), then ``left, top, right, bottom`` (inclusive). Empty mask -> an empty array."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    flat = mask[top : bottom + 1, left : right + 1].ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return np.concatenate((runs, [left, top, right, bottom])).astype(np.int64)


def shapes_reply(encoded: np.ndarray, score: float) -> dict[str, Any]:
    """CVAT's reply for an encoded mask: one ``mask`` shape, or no shape when the mask is empty."""
    if encoded.size < 6:  # CVAT treats fewer than 6 numbers as empty
        return {"shapes": []}
    return {
        "shapes": [
            {
                "type": "mask",
                "points": encoded.tolist(),
                "attributes": [{"spec_id": 0, "value": f"{score:.4f}"}],
            }
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
        positives = _points(body.get("pos_points"), "pos_points", decoded.size)
        negatives = _points(body.get("neg_points"), "neg_points", decoded.size)
        box = _box(body.get("obj_bbox"), decoded.size)
        if not positives and box is None:
            raise BadRequest("pos_points is empty and there is no obj_bbox: a positive click or a box is needed")
        # A box starts its own object (it is the first item of every click sequence of that object).
        prompts = ([box] if box else []) + list(dict.fromkeys(positives + negatives))
        frame = Frame.of(decoded)
        result = self.core.segment(("cvat", key[1], box), frame, prompts, encode_cvat_mask, stats, ordered=False)
        self.calls += 1
        return shapes_reply(result.encoded, result.score)

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
