"""What a fast clicker trades: NoC and annotator time when clicks arrive in bursts, by burst policy.

When an annotator clicks faster than the model answers, the backend answers the superseded requests at once and
the newest request runs its new clicks (``ml_backend/interactive/core.py``, ``BURST_CLICKS``): ``merged`` in one
forward (``add_clicks``), ``exact`` one forward each (only the last answer is sent, so the mask equals the same clicks
made one at a time). The robot user places ``--burst`` clicks on the same (stale) mask, each on the largest error not
yet covered by the burst's earlier clicks (a disk of the error's depth around each is taken out of the error maps);
NoC counts clicks, not forwards; ``--burst 1`` is the standard protocol, in the same run.

Annotator time to 90% (issue 33's model): every click costs ``--click-s`` (1.5 s), a burst's clicks all count (the
annotator made them), and the annotator then waits for the last answer: the forwards of the burst that reached 90%
(or the 20th click) at one forward time for every policy, the median of all forwards of the dataset in this run (the
policies run minutes apart on a shared machine: their own medians would compare the load, not the policies).

    python benchmarks/click_bursts.py --datasets GrabCut,Berkeley,COCO-MVal:val --bursts 1,2,3 [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def burst_instance(
    predictor, image, gt, burst: int, policy: str = "merged", max_clicks: int = 20, thresholds=(0.85, 0.90)
) -> dict:
    """IoU after each click of one instance (the clicks of a burst share the IoU of the answer sent for it), the
    forwards of each burst and the seconds they took."""
    import numpy as np

    from model.evaluation.clicker import error_distance_maps
    from model.evaluation.metrics import iou

    predictor.set_image(image)
    predictor.reset()
    mask = np.zeros(gt.shape, bool)
    not_clicked = np.ones(gt.shape, bool)
    yy, xx = np.ogrid[: gt.shape[0], : gt.shape[1]]
    ious: list[float] = []
    bursts: list[tuple[int, int, float]] = []  # (clicks, forwards, seconds) of each burst
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
        started = time.perf_counter()
        if policy == "merged":
            predictor.add_clicks(clicks)
        else:  # exact: one forward a click, as if each had been answered
            for click in clicks:
                predictor.add_click(*click)
        mask = predictor.prediction().mask
        forwards = 1 if policy == "merged" else len(clicks)
        bursts.append((len(clicks), forwards, time.perf_counter() - started))
        value = float(iou(gt, mask))
        ious += [value] * len(clicks)
        if value >= max(thresholds):
            break
    return {"ious": ious, "bursts": bursts}


def to_target(row: dict, threshold: float) -> tuple[int, int, int]:
    """(clicks, forwards, forwards of the last burst) until the answer that first reaches ``threshold`` (or the
    last answer)."""
    clicks = forwards = last = 0
    for count, burst_forwards, _ in row["bursts"]:
        clicks, forwards, last = clicks + count, forwards + burst_forwards, burst_forwards
        if row["ious"][clicks - 1] >= threshold:
            break
    return clicks, forwards, last


def noc(ious: list[float], threshold: float, max_clicks: int = 20) -> int:
    return next((i + 1 for i, v in enumerate(ious) if v >= threshold), max_clicks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="GrabCut,Berkeley")
    parser.add_argument("--bursts", default="1,2")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--policies", default="merged,exact", help="burst policies to compare (bursts > 1)")
    parser.add_argument("--click-s", type=float, default=1.5, help="seconds an annotator spends on a click")
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
    policies = args.policies.split(",")
    print(f"model {engine.model_version}, refine {engine.refine}, {args.threads} thread(s), click {args.click_s} s\n")
    print(
        "| dataset | clicks per burst | policy | NoC@85 | NoC@90 | clicks made to 90% | forwards to 90% "
        "| forwards waited for the last answer | annotator s to 90% | instances |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        dataset = load_dataset(name)
        count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
        runs = []
        started = time.perf_counter()
        for burst in bursts:
            for policy in policies if burst > 1 else ["one"]:
                rows = [
                    burst_instance(predictor, *dataset[i][1:], burst=burst, policy=policy if burst > 1 else "exact")
                    for i in range(count)
                ]
                runs.append((burst, policy, rows))
        per_forward = statistics.median(s / f for _, _, rows in runs for r in rows for _, f, s in r["bursts"])
        for burst, policy, rows in runs:
            n85 = statistics.mean(noc(r["ious"], 0.85) for r in rows)
            n90 = statistics.mean(noc(r["ious"], 0.90) for r in rows)
            targets = [to_target(r, 0.90) for r in rows]
            clicks = statistics.mean(c for c, _, _ in targets)
            forwards = statistics.mean(f for _, f, _ in targets)
            waited = statistics.mean(w for _, _, w in targets)
            seconds = clicks * args.click_s + waited * per_forward
            print(
                f"| {name} | {burst} | {policy} | {n85:.2f} | {n90:.2f} | {clicks:.2f} | {forwards:.2f} "
                f"| {waited:.2f} | {seconds:.2f} | {count} |",
                flush=True,
            )
        minutes = (time.perf_counter() - started) / 60
        print(f"\n{name}: {1000 * per_forward:.0f} ms per forward (median, all policies), {minutes:.1f} min\n")


if __name__ == "__main__":
    main()
