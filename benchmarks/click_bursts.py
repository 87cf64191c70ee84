"""What a fast clicker trades: NoC when clicks arrive in bursts that run in one forward, against one per forward.

When an annotator clicks faster than the model answers, the backend answers the superseded requests at once and
runs the newest request's new clicks in one forward (``ml_backend/interactive/core.py``; CVAT's bursts likewise).
This measures
the quality cost with the NoC protocol: the robot user places ``--burst`` clicks on the same (stale) mask, each on
the largest error not yet covered by the burst's earlier clicks (a disk of the error's depth around each is taken
out of the error maps), then the predictor adds them with ``add_clicks`` (one forward). NoC counts clicks, not
forwards; ``--burst 1`` is the standard protocol, in the same run.

    python benchmarks/click_bursts.py --datasets GrabCut,Berkeley --bursts 1,2 [--limit N] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def burst_instance(predictor, image, gt, burst: int, max_clicks: int = 20, thresholds=(0.85, 0.90)) -> dict:
    """IoU after each click of one instance (the clicks of a burst share the IoU of their forward)."""
    import numpy as np

    from model.evaluation.clicker import error_distance_maps
    from model.evaluation.metrics import iou

    predictor.set_image(image)
    predictor.reset()
    mask = np.zeros(gt.shape, bool)
    not_clicked = np.ones(gt.shape, bool)
    yy, xx = np.ogrid[: gt.shape[0], : gt.shape[1]]
    ious: list[float] = []
    while len(ious) < max_clicks:
        fn, fp = error_distance_maps(gt, mask)
        fn, fp = fn * not_clicked, fp * not_clicked
        clicks = []
        for _ in range(min(burst, max_clicks - len(ious))):
            positive = bool(fn.max() > fp.max())
            chosen = fn if positive else fp
            depth = float(chosen.max())
            row, col = np.unravel_index(int(np.argmax(chosen)), chosen.shape)
            clicks.append((int(row), int(col), positive))
            not_clicked[row, col] = False
            covered = (yy - row) ** 2 + (xx - col) ** 2 <= max(depth, 1.0) ** 2  # this error is being fixed
            fn, fp = fn * ~covered, fp * ~covered
        predictor.add_clicks(clicks)
        mask = predictor.prediction().mask
        value = float(iou(gt, mask))
        ious += [value] * len(clicks)
        if value >= max(thresholds):
            break
    return {"ious": ious, "forwards": -(-len(ious) // burst)}


def noc(ious: list[float], threshold: float, max_clicks: int = 20) -> int:
    return next((i + 1 for i, v in enumerate(ious) if v >= threshold), max_clicks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="GrabCut,Berkeley")
    parser.add_argument("--bursts", default="1,2")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO))
    from ml_backend.config import Settings
    from ml_backend.interactive.engine import Engine
    from model.evaluation.datasets import load_dataset

    torch.set_num_threads(args.threads)
    engine = Engine(Settings.from_env({}))  # the served default predictor (weights, flip, refinement)
    engine.load()
    if engine.error:
        sys.exit(f"cannot load the model: {engine.error}")
    predictor = engine.new_predictor()
    bursts = [int(b) for b in args.bursts.split(",")]
    print(f"model {engine.model_version}, refine {engine.refine}, {args.threads} thread(s)\n")
    print("| dataset | clicks per forward | NoC@85 | NoC@90 | forwards to 90% (mean) | instances | minutes |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        dataset = load_dataset(name)
        count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        for burst in bursts:
            started = time.perf_counter()
            rows = [burst_instance(predictor, *dataset[i][1:], burst=burst) for i in range(count)]
            n85 = statistics.mean(noc(r["ious"], 0.85) for r in rows)
            n90 = statistics.mean(noc(r["ious"], 0.90) for r in rows)
            forwards = statistics.mean(r["forwards"] for r in rows)
            minutes = (time.perf_counter() - started) / 60
            row = f"| {name} | {burst} | {n85:.2f} | {n90:.2f} | {forwards:.2f} | {count} | {minutes:.1f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
