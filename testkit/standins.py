"""A stand-in predictor for tests and for measuring the server's own overhead (``benchmarks/server.py``).

``DiskPredictor`` is a ``model.interactive.PortableStatePredictor`` (``set_image``/``add_click``/``reset``/
``prediction``, ``get_state``/``set_state``, ``export_state``/``import_state`` for the shared session store) and,
like AdaptiveClick, feeds its previous mask into the next click: the map is the previous mask plus a disk around
each positive click minus a disk around each negative click. It does no learning and no tensor math
worth the name; ``MODEL_ENGINE=testkit.standins:DiskPredictor`` serves it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np

from model.interactive import Prediction, prediction_from

# The engine the tests use where a mask must honour the clicks (positive inside, negative outside): the shipped
# starter model (weights/starter.safetensors), as a user gets it.
SEGMENTATION_ENGINE = "adaptiveclick"


@dataclasses.dataclass(frozen=True)
class DiskState:
    clicks: tuple[tuple[int, int, bool], ...]
    prev: np.ndarray | None


class DiskPredictor:
    forwards = 0  # class-wide count of add_click calls (tests read it)
    _count_lock = threading.Lock()
    threshold = 0.5

    def __init__(self, radius_ratio: float = 0.08, cost_ms: float = 0.0):
        self.radius_ratio = radius_ratio
        self.cost_ms = cost_ms
        self._shape: tuple[int, int] | None = None
        self._state = DiskState((), None)
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    def set_image(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected HxWx3 uint8, got {image.shape} {image.dtype}")
        self._shape = image.shape[:2]
        h, w = self._shape
        self._grid = (np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :])
        self.reset()

    def reset(self) -> None:
        self._state = DiskState((), None)

    @property
    def clicks(self) -> list[tuple[int, int, bool]]:
        return list(self._state.clicks)

    def get_state(self) -> DiskState:
        return self._state

    def set_state(self, state: DiskState) -> None:
        self._state = state

    def prediction(self) -> Prediction:
        if self._state.prev is None:
            raise RuntimeError("no click yet")
        return prediction_from(self._state.prev, self.threshold)

    @property
    def state_tag(self) -> str:
        return f"disk:{self.radius_ratio}"

    def export_state(self, state: DiskState | None = None) -> bytes:
        """Clicks (JSON) + the mask bits: the map is exactly 0.9 inside, 0.1 outside, so this is lossless."""
        state = self._state if state is None else state
        if state.prev is None:
            raise ValueError("only a state after a click can be exported")
        head = json.dumps({"tag": self.state_tag, "clicks": state.clicks, "shape": state.prev.shape}).encode()
        return len(head).to_bytes(4, "little") + head + np.packbits(state.prev > 0.5).tobytes()

    def import_state(self, data: bytes) -> DiskState:
        try:
            size = int.from_bytes(data[:4], "little")
            head = json.loads(data[4 : 4 + size])
            shape = tuple(head["shape"])
            if head["tag"] != self.state_tag or shape != self._shape:
                raise ValueError("a state of other settings or another image")
            bits = np.frombuffer(data[4 + size :], np.uint8)
            mask = np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)
            clicks = tuple((int(r), int(c), bool(p)) for r, c, p in head["clicks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a DiskPredictor state: {exc}") from None
        return DiskState(clicks, np.where(mask, np.float32(0.9), np.float32(0.1)))

    def add_click(self, row: int, col: int, positive: bool = True) -> np.ndarray:
        return self.add_clicks([(row, col, positive)])

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """A new object from a box (edges in pixels): the box's inside, in one "forward"."""
        if self._shape is None:
            raise RuntimeError("set_image first")
        with DiskPredictor._count_lock:
            DiskPredictor.forwards += 1
        h, w = self._shape
        mask = np.zeros((h, w), bool)
        mask[max(0, int(y0)) : min(h, int(np.ceil(y1))), max(0, int(x0)) : min(w, int(np.ceil(x1)))] = True
        self._state = DiskState((), np.where(mask, np.float32(0.9), np.float32(0.1)))
        return self._state.prev

    def set_previous_mask(self, mask: np.ndarray) -> None:
        """A new object continuing ``mask`` (an accepted region): later clicks add and cut disks from it."""
        if self._shape is None:
            raise RuntimeError("set_image first")
        if np.shape(mask) != self._shape:
            raise ValueError(f"mask {np.shape(mask)} is not {self._shape}")
        self._state = DiskState((), np.where(np.asarray(mask) > 0.5, np.float32(0.9), np.float32(0.1)))

    def add_clicks(self, clicks) -> np.ndarray:
        """Several clicks in one "forward" (counted once), like ``model.predictor.Predictor.add_clicks``."""
        if self._shape is None or self._grid is None:
            raise RuntimeError("set_image first")
        with DiskPredictor._count_lock:
            DiskPredictor.forwards += 1
        if self.cost_ms:
            time.sleep(self.cost_ms / 1000.0)
        h, w = self._shape
        rows, cols = self._grid
        radius = max(2.0, self.radius_ratio * min(h, w))
        prev = self._state.prev
        mask = np.zeros((h, w), bool) if prev is None else prev > 0.5
        added = []
        for row, col, positive in clicks:
            if not (0 <= row < h and 0 <= col < w):
                raise ValueError(f"click ({row}, {col}) outside {h}x{w}")
            disk = (rows - row) ** 2 + (cols - col) ** 2 <= radius * radius
            mask = (mask | disk) if positive else (mask & ~disk)
            added.append((int(row), int(col), bool(positive)))
        prob = np.where(mask, np.float32(0.9), np.float32(0.1))
        self._state = DiskState(self._state.clicks + tuple(added), prob)
        return prob
