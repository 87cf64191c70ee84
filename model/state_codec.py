"""Bytes <-> the parts of a predictor state that another process needs to continue a click session.

What is stored is, for images larger than the network's input, not the full-resolution probability map (8 MB
of float32 at 2 MP, which hardly compresses: the guided upsampling makes almost every pixel a distinct value) but
what it is computed from: the network's output after the last click (``kind="logits"``: 320x320 float32 for the
starter, 448x448 for ViT-B 448), the clicks and the zoom ROI; :meth:`model.predictor.Predictor.import_state`
recomputes the map from them with the same code that made it, so the result is bit-for-bit the map the exporting
process held (same weights, settings and device kind). For smaller images the map itself is smaller and is stored
as it is (``kind="probs"``).

Layout: ``MAGIC`` (4 bytes), a format byte, a 4-byte little-endian header length, a JSON header (clicks, ROI,
image size, the float32 logits' shape, the predictor's ``state_tag``, the box prompt when the object started from
a box), then the logits' bytes byte-shuffled
(the four bytes of each float32 in four planes: the sign/exponent bytes repeat) and compressed with zstd level 1
when ``zstandard`` is installed (0.6 ms for the starter's 320x320 logits; zlib level 1, the fallback, takes ~10 ms
for about the same size). Nothing is pickled: a blob from an untrusted store can only fail to decode.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import numpy as np

try:
    import zstandard
except ImportError:  # optional (the redis extra): zlib does the same job, slower
    zstandard = None

MAGIC = b"ACST"
FORMAT = 1
_HEAD = struct.Struct("<4sBI")
MAX_HEADER_BYTES = 1 << 20
MAX_LOGITS_ELEMENTS = 4096 * 4096
MAX_SIDE = 1 << 20  # pixels per side of the image a state claims; the predictor then checks its own size


class StateFormatError(ValueError):
    """The bytes are not a state this predictor can continue from (corrupt, other format or other settings)."""


@dataclasses.dataclass(frozen=True)
class BoxParts:
    """A box prompt: the box, the clicks derived from it, its ROI and its clip region (``None``: no clip)."""

    box: tuple[int, int, int, int]
    clicks: tuple[tuple[int, int, bool], ...]
    roi: tuple[int, int, int, int]
    clip: tuple[int, int, int, int] | None


@dataclasses.dataclass(frozen=True)
class StateParts:
    """The stored parts: clicks ``(row, col, positive)``, the ROI, the image size and one float32 array: the
    network's logits (``kind="logits"``) or the full-resolution probability map (``kind="probs"``), and the box
    prompt the clicks follow (``None`` for click-only sessions)."""

    clicks: tuple[tuple[int, int, bool], ...]
    roi: tuple[int, int, int, int]
    image_hw: tuple[int, int]
    array: np.ndarray
    kind: str = "logits"
    box: BoxParts | None = None


def encode(parts: StateParts, tag: str) -> bytes:
    """The blob for ``parts``, marked with the predictor's ``tag`` (its settings' fingerprint)."""
    if parts.kind not in ("logits", "probs"):
        raise ValueError(f"unknown state array kind {parts.kind!r}")
    logits = np.ascontiguousarray(parts.array, dtype=np.float32)
    header = {
        "tag": tag,
        "clicks": [[int(r), int(c), bool(p)] for r, c, p in parts.clicks],
        "roi": [int(v) for v in parts.roi],
        "image_hw": [int(v) for v in parts.image_hw],
        "shape": list(logits.shape),
        "kind": parts.kind,
        "codec": "zstd" if zstandard is not None else "zlib",
    }
    if parts.box is not None:
        box = parts.box
        header["box"] = {
            "box": [int(v) for v in box.box],
            "clicks": [[int(r), int(c), bool(p)] for r, c, p in box.clicks],
            "roi": [int(v) for v in box.roi],
            "clip": None if box.clip is None else [int(v) for v in box.clip],
        }
    head = json.dumps(header, separators=(",", ":")).encode()
    planes = np.frombuffer(logits.tobytes(), np.uint8).reshape(-1, 4).T  # byte shuffle
    shuffled = np.ascontiguousarray(planes).tobytes()
    if zstandard is not None:
        payload = zstandard.ZstdCompressor(level=1).compress(shuffled)
    else:
        payload = zlib.compress(shuffled, 1)
    return _HEAD.pack(MAGIC, FORMAT, len(head)) + head + payload


def decode(data: bytes, tag: str) -> StateParts:
    """The parts stored in ``data``; :class:`StateFormatError` when they are not for a predictor with ``tag``."""
    if len(data) < _HEAD.size:
        raise StateFormatError("state blob too short")
    magic, version, head_len = _HEAD.unpack_from(data)
    if magic != MAGIC or version != FORMAT:
        raise StateFormatError(f"not a state blob of format {FORMAT}")
    if head_len > MAX_HEADER_BYTES or _HEAD.size + head_len > len(data):
        raise StateFormatError("state blob header is truncated")
    try:
        header = json.loads(data[_HEAD.size : _HEAD.size + head_len])
        stored_tag = header["tag"]
        clicks = tuple((int(r), int(c), bool(p)) for r, c, p in header["clicks"])
        roi = tuple(int(v) for v in header["roi"])
        image_hw = tuple(int(v) for v in header["image_hw"])
        shape = tuple(int(v) for v in header["shape"])
        codec, kind = str(header["codec"]), str(header["kind"])
        box = _box_parts(header.get("box"))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        # OverflowError: a number such as 1e400 (inf) where an int belongs; RecursionError: nesting a JSON
        # parser cannot follow. A tampered or corrupt header is a miss, never an error of the request.
        raise StateFormatError(f"state blob header is unreadable ({type(exc).__name__})") from None
    if stored_tag != tag:
        raise StateFormatError("the state was made by a predictor with other settings")
    if len(roi) != 4 or len(image_hw) != 2 or not (clicks or box) or kind not in ("logits", "probs"):
        raise StateFormatError("state blob header is inconsistent")
    height, width = image_hw
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise StateFormatError(f"state blob image size {image_hw} is out of range")
    if not all(0 <= r < height and 0 <= c < width for r, c, _ in clicks + (box.clicks if box else ())):
        raise StateFormatError("state blob clicks lie outside its image")
    count = int(np.prod(shape)) if shape else 0
    if not 0 < count <= MAX_LOGITS_ELEMENTS:
        raise StateFormatError(f"state blob logits shape {shape} is out of range")
    raw = _decompress(codec, data[_HEAD.size + head_len :], count * 4)
    if len(raw) != count * 4:
        raise StateFormatError("state blob payload has the wrong size")
    unshuffled = np.ascontiguousarray(np.frombuffer(raw, np.uint8).reshape(4, count).T)
    array = unshuffled.view(np.float32).reshape(shape)
    # NaN or inf logits would reach the model as out-of-range sampling offsets (on a GPU a device-side assert
    # that breaks the process); a probability map outside [0, 1] is not one this predictor made.
    if not np.isfinite(array).all() or (kind == "probs" and not (array.min() >= 0.0 and array.max() <= 1.0)):
        raise StateFormatError("state blob holds values a predictor never stores (non-finite or out of range)")
    return StateParts(clicks, roi, image_hw, array, kind, box)


def _box_parts(stored: dict | None) -> BoxParts | None:
    """The header's box prompt (absent in click-only states); raises ValueError/KeyError/TypeError when malformed."""
    if stored is None:
        return None
    box, roi = tuple(int(v) for v in stored["box"]), tuple(int(v) for v in stored["roi"])
    clip = None if stored["clip"] is None else tuple(int(v) for v in stored["clip"])
    if len(box) != 4 or len(roi) != 4 or (clip is not None and len(clip) != 4):
        raise ValueError("box prompt fields must have four values")
    clicks = tuple((int(r), int(c), bool(p)) for r, c, p in stored["clicks"])
    return BoxParts(box, clicks, roi, clip)


def _decompress(codec: str, payload: bytes, size: int) -> bytes:
    """At most ``size`` + 1 bytes of ``payload``: a corrupt or hostile blob cannot inflate past what it claims."""
    try:
        if codec == "zlib":
            return zlib.decompressobj().decompress(payload, size + 1)
        if codec == "zstd" and zstandard is not None:
            if zstandard.frame_content_size(payload) != size:
                raise StateFormatError("state blob payload has the wrong size")
            return zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
    except (zlib.error, getattr(zstandard, "ZstdError", zlib.error)) as exc:
        raise StateFormatError(f"state blob payload is corrupt ({exc})") from None
    raise StateFormatError(f"state blob compressed with {codec!r}, which this process cannot read")
