"""Latency, memory and FLOP utilisation of AdaptiveClick inference (not a test).

    python benchmarks/latency.py [--config vit_b_448 | --checkpoint F] [--repeats 7] [--threads N] [--json out.json]

Reports, for fp32 and bf16: the median time of one network forward (batch 1 and the flip batch of 2;
batch 1 also with the other deformable-attention kernel) and of one predictor click (flip on/off) after
warm-up, peak RSS, FLOPs per forward (PyTorch's FLOP counter), the machine's measured matmul peak and the
fraction of it a forward reaches, and the IoU between the fp32 and bf16 masks over a click sequence on a real
image.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.build import build_model  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.device import autocast  # noqa: E402
from model.predictor import Predictor  # noqa: E402

SESSION_CLICKS = [
    (104, 204, True),
    (86, 241, True),
    (77, 174, True),
    (134, 182, True),
    (130, 187, True),
    (109, 360, True),
]


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, size: int = 3072, repeats: int = 7) -> float:
    """Best GFLOP/s of a large square matmul after warm-up: the practical peak of this machine."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def forward_flops(model: torch.nn.Module, batch: int, size: tuple[int, int]) -> int:
    image, points = torch.rand(batch, 4, *size), torch.tensor([[[200.0, 200.0, 0.0], [-1.0, -1.0, -1.0]]] * batch)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(image, points)
    return counter.get_total_flops()


def load_image() -> np.ndarray:
    path = REPO.parent / "shared" / "golden" / "session_grabcut.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["image"].numpy()
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (321, 481, 3), dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="vit_b_448")
    parser.add_argument("--checkpoint")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = load_checkpoint(args.checkpoint) if args.checkpoint else build_model(args.config)
    model.eval()
    size = model.native_image_size
    image = load_image()
    report: dict = {
        "model": args.checkpoint or args.config,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "input": list(size),
    }
    report["matmul_peak_gflops"] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    report["gflops_per_forward"] = {
        "batch1": forward_flops(model, 1, size) / 1e9,
        "batch2": forward_flops(model, 2, size) / 1e9,
    }

    masks = {}
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        entry = {}
        for batch in (1, 2):
            x = torch.rand(batch, 4, *size)
            pts = torch.tensor([[[200.0, 200.0, 0.0], [-1.0, -1.0, -1.0]]] * batch)

            def forward(x: torch.Tensor = x, pts: torch.Tensor = pts, dtype: torch.dtype = dtype) -> None:
                with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
                    model(x, pts)

            if batch == 1:
                forward_b1 = forward

            entry[f"forward_b{batch}_s"] = median_time(forward, args.repeats)
        # The other deformable-attention kernel, for comparison ("auto" above: grid_sample for fp32,
        # gather for bf16).
        other = "gather" if dtype == torch.float32 else "grid_sample"
        model.set_deformable_sampler(other)
        entry[f"forward_b1_{other}_s"] = median_time(forward_b1, args.repeats)
        model.set_deformable_sampler("auto")
        flops = report["gflops_per_forward"]["batch1"] * 1e9
        entry["forward_b1_fraction_of_peak"] = (
            flops / entry["forward_b1_s"] / (report["matmul_peak_gflops"][name] * 1e9)
        )
        for flip in (True, False):
            predictor = Predictor(model, device="cpu", dtype=name, flip=flip)
            predictor.set_image(image)

            def click(predictor: Predictor = predictor) -> None:
                predictor.reset()
                predictor.add_click(*SESSION_CLICKS[0])
                predictor.add_click(*SESSION_CLICKS[1])

            entry[f"click_{'flip' if flip else 'noflip'}_s"] = median_time(click, args.repeats) / 2
        predictor = Predictor(model, device="cpu", dtype=name, flip=True)
        predictor.set_image(image)
        masks[name] = [predictor.add_click(*c) > predictor.threshold for c in SESSION_CLICKS]
        report[name] = entry
    if "fp32" in masks and "bf16" in masks:
        ious = []
        for a, b in zip(masks["fp32"], masks["bf16"]):
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
        report["bf16_vs_fp32_mask_iou"] = {"per_click": ious, "min": min(ious)}
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
