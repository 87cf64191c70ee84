"""Reading image files: photos as RGB, masks and label maps as stored. One reader per kind for the whole project."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


class ImageReadError(ValueError):
    """A file is missing or cannot be decoded as an image; the message names it."""


def _read(path: str | os.PathLike, flags: int, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{what} not found: {path}")
    data = cv2.imread(str(path), flags)
    if data is None:
        raise ImageReadError(f"{path}: cannot decode it as an {what}")
    return data


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """A photo as HxWx3 uint8 RGB (grey images get three equal channels, alpha is dropped, 16 bit scaled to 8)."""
    return cv2.cvtColor(_read(path, cv2.IMREAD_COLOR, "image"), cv2.COLOR_BGR2RGB)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A mask or label map without any conversion (8/16-bit, 1 or 3 channels as stored)."""
    return _read(path, cv2.IMREAD_UNCHANGED, "mask image")
