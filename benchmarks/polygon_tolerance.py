"""Polygon answers: the simplification tolerance (quality) and what a polygon answer costs per click (latency).

    # vertices per object and IoU with the mask, one row per tolerance; picks POLYGON_TOLERANCE_PX
    python benchmarks/polygon_tolerance.py quality [--datasets ECSSD:val,COCO-MVal:val,...]
        [--tolerances 0,0.5,1,...] [--min-area PX] [--out results/polygon_tolerance.json]
    # milliseconds per answer on a 2-MP mask: brush RLE (today's answer) and polygon regions, one thread
    python benchmarks/polygon_tolerance.py latency [--size 1920x1080] [--repeats 30]

Quality: every ground-truth mask of the validation splits of training data (never GrabCut or Berkeley) goes
through ``ml_backend.masks.polygons.mask_to_polygons`` and back through ``polygons_to_mask``; IoU is with the mask
itself,
so it includes what any tolerance loses (holes filled, parts under the minimum area dropped): the row at
tolerance 0. The pick is the largest tolerance whose 10th percentile of per-object IoU is >= 0.98 (the mean hides
the small and thin objects that simplification hurts most; a percentile bounds how many objects fall short).
Deterministic: no timing, no machine needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.config import POLYGON_MIN_AREA_PX  # noqa: E402
from ml_backend.masks.polygons import mask_to_polygons, polygons_to_mask  # noqa: E402
from model.evaluation.datasets import load_dataset  # noqa: E402

IOU_GOAL = 0.98
PERCENTILE = 10


def measure(masks: list[np.ndarray], tolerance: float, min_area: int) -> dict[str, float]:
    """Vertices per object and IoU of the rasterised polygons with each mask, summarised."""
    vertices, ious = [], []
    for mask in masks:
        polygons = mask_to_polygons(mask, tolerance_px=tolerance, min_area_px=min_area)
        back = polygons_to_mask(polygons, *mask.shape)
        union = np.count_nonzero(back | mask)
        ious.append(np.count_nonzero(back & mask) / union if union else 1.0)
        vertices.append(sum(len(p) for p in polygons))
    iou = np.array(ious)
    return {
        "tolerance_px": tolerance,
        "objects": len(masks),
        "mean_vertices": float(np.mean(vertices)),
        "median_vertices": float(np.median(vertices)),
        "mean_iou": float(iou.mean()),
        f"p{PERCENTILE}_iou": float(np.percentile(iou, PERCENTILE)),
        "min_iou": float(iou.min()),
        "share_below_goal": float(np.mean(iou < IOU_GOAL)),
    }


def _masks(names: list[str]) -> list[np.ndarray]:
    masks = []
    for name in names:
        for sample in load_dataset(name):
            masks.append(sample.gt == 1)  # 255 = ignore (Pets-sample) counts as background here
    return masks


def quality(args: argparse.Namespace) -> None:
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if any(n.split(":")[0].lower() in ("grabcut", "berkeley") for n in names):
        raise SystemExit("GrabCut and Berkeley are evaluation only: choose the tolerance on training-data splits")
    masks = _masks(names)
    tolerances = [float(t) for t in args.tolerances.split(",")]
    rows = [measure(masks, t, args.min_area) for t in tolerances]
    key = f"p{PERCENTILE}_iou"
    passing = [r["tolerance_px"] for r in rows if r[key] >= IOU_GOAL]
    choice = max(passing) if passing else None

    print(f"{len(masks)} objects from {', '.join(names)}; minimum part area {args.min_area} px")
    print(f"| tolerance px | vertices mean | vertices median | IoU mean | IoU p{PERCENTILE} | IoU min | < {IOU_GOAL} |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['tolerance_px']:g} | {r['mean_vertices']:.1f} | {r['median_vertices']:.0f} | {r['mean_iou']:.4f} "
            f"| {r[key]:.4f} | {r['min_iou']:.4f} | {100 * r['share_below_goal']:.1f}% |"
        )
    print(f"choice: largest tolerance with IoU p{PERCENTILE} >= {IOU_GOAL}: {choice}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"datasets": names, "min_area_px": args.min_area, "rows": rows, "choice": choice}))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def latency(args: argparse.Namespace) -> None:
    """Median milliseconds per answer for the same masks, brush and polygon side by side in one run."""
    import cv2

    from ml_backend.config import POLYGON_TOLERANCE_PX
    from ml_backend.masks.polygons import polygon_regions
    from ml_backend.masks.rle import mask2rle

    cv2.setNumThreads(1)
    width, height = (int(v) for v in args.size.lower().split("x"))
    every = _masks(["ECSSD:val"])
    masks = every[:: max(1, len(every) // 8)][:8]
    big = [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) for m in masks]
    answers = {
        "brush (mask2rle)": lambda m: mask2rle(m * 255),
        f"polygon (polygon_regions, {POLYGON_TOLERANCE_PX} px)": lambda m: polygon_regions(
            mask=m.astype(bool),
            from_name="p",
            to_name="i",
            label="L",
            rotation=0,
            score=1.0,
            tolerance_px=POLYGON_TOLERANCE_PX,
            min_area_px=POLYGON_MIN_AREA_PX,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in answers}
    for _ in range(args.repeats):
        for name, answer in answers.items():  # interleaved, so drifts in machine load hit both alike
            for mask in big:
                start = time.perf_counter()
                answer(mask)
                times[name].append((time.perf_counter() - start) * 1000)
    machine = (
        f"{_cpu_name()}, {os.cpu_count()} CPUs, OpenCV and numpy on 1 thread, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{len(big)} ECSSD:val masks resized to {width}x{height}, {args.repeats} repeats; {machine}")
    print("| answer | median ms | p90 ms |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {np.percentile(values, 90):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quality", help="vertices and IoU per tolerance; the pick")
    q.add_argument("--datasets", default="ECSSD:val,COCO-MVal:val,Pets-sample:val,Weizmann-Horses:val")
    q.add_argument("--tolerances", default="0,0.5,0.75,1,1.25,1.5,2,3,4")
    q.add_argument("--min-area", type=int, default=POLYGON_MIN_AREA_PX, help="default: POLYGON_MIN_AREA_PX")
    q.add_argument("--out", default="results/polygon_tolerance.json")
    q.set_defaults(run=quality)
    t = commands.add_parser("latency", help="ms per brush and polygon answer on a 2-MP mask")
    t.add_argument("--size", default="1920x1080")
    t.add_argument("--repeats", type=int, default=30)
    t.set_defaults(run=latency)
    args = parser.parse_args()
    args.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
