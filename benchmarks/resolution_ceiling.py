"""The best IoU a network that predicts at 1/4 of its input size can reach on each instance, after zoom-in.

For every instance: the ROI the predictor's zoom-in would choose if the previous mask were the ground truth (box
x1.4, at least 200 px), the ground truth cropped and resized to the network input as the image is, averaged over
4x4 cells (the best 1/4-resolution probability map), upsampled and pasted back the way the predictor does it,
thresholded at 0.5 and compared with the ground truth. Instances below 0.85 here can never count as reached at
NoC@85, however well a model is trained: their share bounds what fine-tuning can do on a data set.

    python benchmarks/resolution_ceiling.py --frames 12      # CamVid held-out frames, 3 largest instances each
    python benchmarks/resolution_ceiling.py --datasets GrabCut,Berkeley --input-size 320,448

With ``--datasets`` it reads evaluation sets as ``adaptiveclick evaluate`` does and also reports the ceiling of the
whole image resized to the input (what the first click sees, before any zoom-in).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from finetune_camvid import instance_classes, largest_ids, spread  # noqa: E402

from model.zoom_in import ZoomIn, object_roi  # noqa: E402


def ceiling_iou(gt: np.ndarray, zoom: ZoomIn, stride: int = 4, whole_image: bool = False) -> float:
    """IoU of the best ``stride``-times-coarser prediction for ``gt`` (HxW bool), seen through zoom-in (or, with
    ``whole_image``, with the whole image resized to the input)."""
    h, w = gt.shape
    roi = (0, h - 1, 0, w - 1) if whole_image else object_roi(gt, [], zoom.expansion_ratio, zoom.min_crop_size)
    crop = zoom.crop(torch.from_numpy(gt.astype(np.float32))[None, None], roi)
    coarse = torch.logit(F.avg_pool2d(crop, stride).clamp(1e-4, 1 - 1e-4))
    fine = F.interpolate(coarse, size=zoom.target_size, mode="bilinear", align_corners=True).sigmoid()
    pred = zoom.paste(fine, roi, gt.shape)[0, 0].numpy() > 0.5
    return float((pred & gt).sum() / (pred | gt).sum())


def dataset_ceilings(names: list[str], sizes: list[int], stride: int) -> None:
    """Ceiling IoU per evaluation set and input size, whole image and zoomed, as a Markdown table."""
    from model.evaluation.datasets import load_dataset

    print(f"| data set | instances | input | view | mean ceiling IoU | below 0.85 | below 0.90 |\n{'|---' * 7}|")
    for name in names:
        dataset = load_dataset(name)
        gts = [sample.gt for sample in dataset]
        for size in sizes:
            zoom = ZoomIn(target_size=(size, size))
            for view, whole in (("whole image", True), ("zoom-in", False)):
                # ignore pixels (-1) count as background here: the ceiling is a property of the object's shape
                ious = np.array([ceiling_iou(gt == 1, zoom, stride, whole) for gt in gts])
                print(
                    f"| {name} | {len(ious)} | {size} px | {view} | {ious.mean():.3f} | "
                    f"{(ious < 0.85).sum()} | {(ious < 0.90).sum()} |",
                    flush=True,
                )


def main(argv=None) -> int:
    default_data = Path(os.environ.get("ADAPTIVECLICK_DATA", REPO.parent / "shared" / "datasets")) / "CamVid"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(default_data))
    p.add_argument("--split", default="heldout", help="a list of splits.json")
    p.add_argument("--frames", type=int, default=12, help="frames spread over the split")
    p.add_argument("--limit-instances", type=int, default=3, help="largest instances per frame")
    p.add_argument(
        "--input-size", default="320", help="the network input (starter: 320, ViT-B: 448); with --datasets a list"
    )
    p.add_argument("--stride", type=int, default=4, help="how much coarser than its input the network predicts")
    p.add_argument("--datasets", default=None, help="evaluation sets (comma-separated) instead of CamVid frames")
    args = p.parse_args(argv)
    sizes = [int(size) for size in args.input_size.split(",")]
    if args.datasets:
        dataset_ceilings(args.datasets.split(","), sizes, args.stride)
        return 0

    data = Path(args.data)
    classes = instance_classes(data)
    frames = spread(json.loads((data / "splits.json").read_text())[args.split], args.frames)
    zoom = ZoomIn(target_size=(sizes[0], sizes[0]))
    by_class: dict[str, list[float]] = {}
    for frame in frames:
        regions = cv2.imread(str(data / "regions" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        for i in largest_ids(regions, args.limit_instances):
            by_class.setdefault(classes[frame][i - 1], []).append(ceiling_iou(regions == i, zoom, args.stride))
    print(
        f"{args.split}: {len(frames)} frames, {sum(map(len, by_class.values()))} instances, "
        f"input {sizes[0]} px, predictions at 1/{args.stride}"
    )
    print("| class | instances | mean ceiling IoU | below 0.85 | below 0.90 |\n|---|---|---|---|---|")
    everything = [v for values in by_class.values() for v in values]
    for name, values in [*sorted(by_class.items()), ("all", everything)]:
        ious = np.array(values)
        print(f"| {name} | {len(ious)} | {ious.mean():.3f} | {(ious < 0.85).sum()} | {(ious < 0.90).sum()} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
