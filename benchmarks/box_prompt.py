"""Box-as-first-prompt strategies (``model/box_prompt.py``) against clicks only, with the NoC protocol.

Every candidate :class:`~model.box_prompt.BoxStrategy` runs the protocol with the ground truth's tight box as the
first interaction; the click-only protocol runs in the same process on the same objects as the baseline. Choose
on validation splits of training data only:

    # the sweep: box-alone IoU of every candidate (--max-clicks 1 is cheap), then NoC for the finalists
    OMP_NUM_THREADS=1 python benchmarks/box_prompt.py --datasets ECSSD:val --limit 40 --max-clicks 1 --out r/ecssd.json
    OMP_NUM_THREADS=1 python benchmarks/box_prompt.py --datasets ECSSD:val --strategies default --out r/noc.json

The predictor has the served settings (``cli/predictor_options.py`` defaults: flip off, ``guided,clean``); the
final GrabCut/Berkeley report uses ``adaptiveclick evaluate --first click,box`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.box_prompt import DEFAULT_BOX_STRATEGY, BoxStrategy  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.evaluation.datasets import load_dataset  # noqa: E402
from model.evaluation.metrics import compute_noc, mean_iou_per_click  # noqa: E402
from model.evaluation.runner import evaluate_dataset  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.refine import DEFAULT_FLIP, DEFAULT_REFINE  # noqa: E402

NO_CLIP = BoxStrategy(clip_margin=None)
EDGE = dataclasses.replace(NO_CLIP, corner_negatives=True, clip_margin=0.0)  # the best of the first round
CANDIDATES: dict[str, BoxStrategy] = {
    "default": DEFAULT_BOX_STRATEGY,
    # First round: click placement, corner negatives, clip.
    "centre": NO_CLIP,
    "centre+clip": dataclasses.replace(NO_CLIP, clip_margin=0.05),
    "centre+clip0": dataclasses.replace(NO_CLIP, clip_margin=0.0),
    "centre+neg": dataclasses.replace(NO_CLIP, corner_negatives=True),
    "centre+neg+clip": dataclasses.replace(NO_CLIP, corner_negatives=True, clip_margin=0.05),
    "inner": dataclasses.replace(NO_CLIP, click="inner"),
    # Second round, on top of centre + corner negatives + clip at the box edge: priors, ROI size, a second look.
    "neg+clip0": EDGE,
    "neg+clip0+ellipse": dataclasses.replace(EDGE, prior="ellipse"),
    "neg+clip0+box": dataclasses.replace(EDGE, prior="box"),
    "neg+clip0+feedback": dataclasses.replace(EDGE, feedback=True),
    "neg+clip0+inner+feedback": dataclasses.replace(EDGE, click="inner", feedback=True),
    "neg+clip0+roi1.2": dataclasses.replace(EDGE, roi_ratio=1.2),
    "neg+clip0+roi2": dataclasses.replace(EDGE, roi_ratio=2.0),
}


def summary(results: list, max_clicks: int) -> dict:
    all_ious = [result.ious for result in results]
    noc, _, nof = compute_noc(all_ious, (0.85, 0.90), max_clicks)
    return {
        "n": len(results),
        "iou1": mean_iou_per_click(all_ious, max_clicks)[0],
        "noc85": noc[0],
        "noc90": noc[1],
        "nof90": nof[1],
        "seconds": sum(result.time_s for result in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="ECSSD:val,COCO-MVal:val")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--checkpoint", default=str(REPO / "weights" / "starter.safetensors"))
    parser.add_argument("--strategies", default=",".join(CANDIDATES), help=f"comma-separated from {list(CANDIDATES)}")
    parser.add_argument("--limit", type=int, default=None, help="first N objects per dataset")
    parser.add_argument("--max-clicks", type=int, default=20, help="1: only the first interaction's IoU")
    parser.add_argument("--box-pad", type=float, default=0.0, help="grow the tight box by this share of its sides")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="results JSON (rows per dataset and strategy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [name for name in args.strategies.split(",") if name]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {list(CANDIDATES)}")

    model = load_model(args.checkpoint, "cpu")
    rows = []
    for dataset_name in args.datasets.split(","):
        dataset = load_dataset(dataset_name, args.data_root)
        runs = [("clicks only", DEFAULT_BOX_STRATEGY, "click")] + [(name, CANDIDATES[name], "box") for name in names]
        for name, strategy, first in runs:
            predictor = Predictor(model, "cpu", flip=DEFAULT_FLIP, refine=DEFAULT_REFINE, box_strategy=strategy)
            results = evaluate_dataset(
                predictor, dataset, args.max_clicks, limit=args.limit, progress=False, first=first, box_pad=args.box_pad
            )
            rows.append({"dataset": dataset_name, "strategy": name, **summary(results, args.max_clicks)})
            print(rows[-1], flush=True)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s)"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "max_clicks": args.max_clicks, "box_pad": args.box_pad, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(rows, args.max_clicks))
    return 0


def table(rows: list[dict], max_clicks: int) -> str:
    """Markdown: IoU after the first interaction, its gain over one click, and NoC when clicks followed."""
    noc = max_clicks > 1
    lines = ["| dataset | first interaction | N | IoU@1 | vs 1 click |" + (" NoC@85 | NoC@90 |" if noc else "")]
    lines.append("|---|---|---|---|---|" + ("---|---|" if noc else ""))
    baseline = {}
    for row in rows:
        if row["strategy"] == "clicks only":
            baseline[row["dataset"]] = row["iou1"]
        gain = row["iou1"] - baseline[row["dataset"]]
        line = f"| {row['dataset']} | {row['strategy']} | {row['n']} | {row['iou1']:.3f} | {gain:+.3f} |"
        if noc:
            line += f" {row['noc85']:.2f} | {row['noc90']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
