"""Seconds per fine-tuning step of the backend's job (``model.training.finetune``), one autocast mode after another.

    python benchmarks/finetune_step.py [--checkpoint weights/starter.safetensors] [--amp fp32,bf16] [--steps 20]

Trains a copy of the checkpoint on ``--frames`` images of a folder in the shared-datasets layout (``images/`` +
``regions/``; CamVid by default, the fine-tuning demonstration's domain) with the job's defaults (batch 4, 0-3
iterative click rounds), and reports the median seconds per step after ``--warmup`` steps, per mode, and the ratios
to the first mode. All modes run in this one process, one after another, on the same samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    default_data = Path(os.environ.get("ADAPTIVECLICK_DATA", REPO.parent / "shared" / "datasets")) / "CamVid"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "weights" / "starter.safetensors"))
    p.add_argument("--data", default=str(default_data), help="folder with images/ and regions/")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--amp", default="fp32,bf16", help="comma-separated autocast modes to time")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from model.images import read_label_map, read_rgb
    from model.training.finetune import finetune, finetune_config, memory_source

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    region_files = sorted((data / "regions").glob("*.png"))[: args.frames]
    if not region_files:
        p.error(f"no regions/*.png under {data}")
    samples = []
    for path in region_files:
        labels = read_label_map(path)
        image = read_rgb(next((data / "images").glob(path.stem + ".*")))
        samples.append((image, [labels == i for i in np.unique(labels) if i > 0]))
    source = memory_source(samples)
    print(
        f"{len(samples)} images, {sum(len(r.objects) for r in source.records)} instances, "
        f"{args.threads} thread(s), batch {args.batch_size}, torch {torch.__version__}"
    )
    medians = {}
    for amp in args.amp.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            settings = finetune_config(
                steps=args.steps,
                batch_size=args.batch_size,
                threads=args.threads,
                device=args.device,
                amp=amp,
                log_every=1,
            )
            _, info = finetune(args.checkpoint, source, settings, out=tmp)
        rows = [line.split(",") for line in info["log"].splitlines()]
        column = rows[0].index("s_per_step")
        times = [float(r[column]) for r in rows[1:]][args.warmup :]
        medians[amp] = statistics.median(times)
        print(f"{amp}: median {medians[amp]:.3f} s/step over {len(times)} steps (autocast {info['autocast']})")
    first = next(iter(medians))
    for amp, median in medians.items():
        print(f"{amp} / {first}: {median / medians[first]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
