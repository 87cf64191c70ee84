"""What a CVAT reply's encoding costs per click: the mask split into parts as CVAT's UI outlines them, each as CVAT's
RLE (``ml_backend.cvat.interactor.encode_cvat_shapes``), on a 2-MP frame with 1, 2 and ~300 parts (median of 7).

    python benchmarks/cvat_shapes.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml_backend.cvat.interactor import encode_cvat_shapes


def masks(height: int = 1080, width: int = 1920) -> dict[str, np.ndarray]:
    yy, xx = np.ogrid[:height, :width]
    one = ((yy - height / 2) / (height * 0.28)) ** 2 + ((xx - width / 2) / (width * 0.21)) ** 2 <= 1
    two = one.copy()
    two[100:200, 100:300] = True
    specks = one.copy()
    rng = np.random.default_rng(0)
    for _ in range(300):
        r, c = rng.integers(0, height - 3), rng.integers(0, width - 3)
        specks[r : r + 2, c : c + 2] = True
    return {"1 part": one, "2 parts": two, "~300 parts": specks}


def main() -> None:
    print("| mask (1920x1080) | parts sent | ms per encoding (median of 7) |\n|---|---|---|")
    for name, mask in masks().items():
        runs = []
        for _ in range(7):
            started = time.perf_counter()
            packed = encode_cvat_shapes(mask)
            runs.append(time.perf_counter() - started)
        parts, i = 0, 0
        while i < packed.size:
            parts, i = parts + 1, i + 1 + int(packed[i])
        print(f"| {name} | {parts} | {1000 * statistics.median(runs):.1f} |")


if __name__ == "__main__":
    main()
