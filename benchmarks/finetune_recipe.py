"""Compare fine-tuning recipes on CamVid quickly, without Label Studio (the model code the backend's job runs).

Same data choice as ``finetune_camvid.py`` (frames spread over ``splits.json``'s ``finetune`` / ``heldout``
sequences, the ``--limit-instances`` largest instances per frame); fine-tunes with
:func:`model.training.finetune.finetune` and measures NoC on the held-out frames with
:func:`model.training.finetune.evaluate_noc` (robot clicker, the predictor options ``serve`` uses by default, as the
fine-tuning job measures).
Use it to choose ``FINETUNE_*`` defaults; the product's number comes from ``finetune_camvid.py``.

    python benchmarks/finetune_recipe.py --limit-frames 48 --steps 600 --lr 1e-5 --zoom-in-prob 0.5 --out results/r1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from finetune_camvid import instance_classes, largest_ids, spread  # noqa: E402


def load_frames(data: Path, frames: list[str], k: int) -> list[tuple[np.ndarray, list[np.ndarray], list[str]]]:
    """``(image, masks of the k largest instances, their classes)`` per frame."""
    classes = instance_classes(data)
    samples = []
    for frame in frames:
        regions = cv2.imread(str(data / "regions" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        ids = largest_ids(regions, k)
        if ids:
            image = cv2.imread(str(data / "images" / f"{frame}.jpg"))[:, :, ::-1].copy()
            samples.append((image, [regions == i for i in ids], [classes[frame][i - 1] for i in ids]))
    return samples


def measure(net, heldout: list[tuple[np.ndarray, np.ndarray, str]]) -> dict:
    """NoC@85/90 overall and NoC@85 per class (robot clicker, 20 clicks, the served predictor options)."""
    from model.refine import DEFAULT_FLIP, DEFAULT_REFINE
    from model.training.finetune import evaluate_noc

    samples = [(image, mask) for image, mask, _ in heldout]
    result = evaluate_noc(net, samples, flip=DEFAULT_FLIP, refine=DEFAULT_REFINE).to_dict()
    by_class: dict[str, list[int]] = {}
    for noc, (_, _, name) in zip(result.pop("noc85_per_instance"), heldout):
        by_class.setdefault(name, []).append(noc)
    result["noc85_by_class"] = {c: round(float(np.mean(v)), 2) for c, v in sorted(by_class.items())}
    return result


def main(argv=None) -> int:
    default_data = Path(os.environ.get("ADAPTIVECLICK_DATA", REPO.parent / "shared" / "datasets")) / "CamVid"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "weights" / "starter.safetensors"))
    p.add_argument("--data", default=str(default_data))
    p.add_argument("--limit-frames", type=int, default=48)
    p.add_argument("--heldout-frames", type=int, default=12)
    p.add_argument("--limit-instances", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="0: only measure --checkpoint on the held-out frames")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lr-milestones", default="1.0", help="fractions of --steps where lr x0.1 (1.0: constant)")
    p.add_argument("--zoom-in-prob", type=float, default=0.0)
    p.add_argument("--max-extra-clicks", type=int, default=3)
    p.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: fp32 on CPU (bf16 is emulated, ~6x slower, without AVX-512 BF16)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-before", action="store_true", help="also measure the starting checkpoint")
    p.add_argument(
        "--train-on-heldout",
        action="store_true",
        help="diagnostic: train on the held-out frames themselves (an upper bound of what fitting can do)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch

    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.training.finetune import finetune, finetune_config, memory_source

    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = json.loads((data / "splits.json").read_text())
    train_split = "heldout" if args.train_on_heldout else "finetune"
    train_frames = (
        spread(splits["heldout"], args.heldout_frames)
        if args.train_on_heldout
        else spread(splits["finetune"], args.limit_frames)
    )
    train = [(image, masks) for image, masks, _ in load_frames(data, train_frames, args.limit_instances)]
    heldout = [
        (image, mask, name)
        for image, masks, names in load_frames(
            data, spread(splits["heldout"], args.heldout_frames), args.limit_instances
        )
        for mask, name in zip(masks, names)
    ]
    print(
        f"{len(train)} {train_split} frames / {sum(len(m) for _, m in train)} instances to train on, "
        f"{len(heldout)} held-out instances",
        flush=True,
    )
    report: dict = {"settings": vars(args)}
    if args.eval_before or args.steps == 0:
        report["before"] = measure(load_checkpoint(args.checkpoint), heldout)
        print("before", report["before"], flush=True)
    if args.steps == 0:
        (out / "report.json").write_text(json.dumps(report, indent=2))
        return 0
    settings = finetune_config(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_milestones=tuple(float(m) for m in args.lr_milestones.split(",")),
        amp=args.amp,
        max_extra_clicks=args.max_extra_clicks,
        threads=args.threads,
        zoom_in_prob=args.zoom_in_prob,
        log_every=50,
    )
    t0 = time.perf_counter()
    net, _ = finetune(args.checkpoint, memory_source(train), settings, out=out / "run")
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    save_checkpoint(net, out / "model.safetensors")
    report["after"] = measure(net, heldout)
    print("after", report["after"], flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
