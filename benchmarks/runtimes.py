"""The runtime table: forward and per-click time of each runtime and precision, the fraction of the machine's matmul
rate a forward reaches, and how far each one's masks are from the reference's (not a test).

    python benchmarks/runtimes.py [--models starter,vit_b_448] [--device cpu] [--dtypes fp32,bf16]
        [--runtimes torch,fast] [--threads 2] [--repeats 5]

``starter`` is the shipped checkpoint; other names are configs with random weights (time does not depend on the
weights; their masks are meaningless, so the IoU column is only given for checkpoints). Per model: the GFLOP of one
forward (PyTorch's FLOP counter) and the fp32 rate of a GEMM of the forward's own largest shape (the ViT MLP's first
layer) on this machine; per (precision, runtime): the median forward (batch 1), the fraction of that GEMM rate it
reaches, the median warm click of the served default refinement on a 2-MP image (8-click sessions), the mask IoU
against ``torch``/fp32 after each of 20 robot clicks (minimum), and the peak memory (CUDA: allocated by torch; CPU:
the process's peak RSS so far). ``--robot-clicks 0 --runtimes fast --repeats 1`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).parent))

from click_speed import CLICKS, robot_click, test_image  # noqa: E402

from model.build import build_model  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.device import autocast, resolve_dtype  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.refine import DEFAULT_FLIP, DEFAULT_REFINE  # noqa: E402
from model.runtime import RUNTIMES  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gemm_gflops(net: torch.nn.Module, device: torch.device, repeats: int) -> float:
    """fp32 GFLOP/s of the ViT MLP's first layer at the native input: (tokens, C) x (C, 4C), the forward's largest
    GEMM shape (a fair ceiling for this network; a 3072-square GEMM runs a little faster)."""
    grid = net.backbone.grid_size
    tokens, channels = grid[0] * grid[1], net.backbone.pos_embed.shape[-1]
    a = torch.randn(tokens, channels, device=device)
    b = torch.randn(channels, 4 * channels, device=device)
    seconds = median_seconds(lambda: torch.mm(a, b), device, max(repeats, 20), warmup=5)
    return 2 * tokens * channels * 4 * channels / seconds / 1e9


def use_runtime(net: torch.nn.Module, runtime: str) -> None:
    """What the predictor sets before each forward (model.predictor), for forward-only timing."""
    net.set_deformable_sampler("gather" if runtime == "fast" else "auto")
    net.set_fused_attention(runtime == "fast")


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def robot_masks(predictor: Predictor, image: np.ndarray, inside: np.ndarray, clicks: int) -> list[np.ndarray]:
    predictor.set_image(image)
    masks, mask = [], np.zeros(inside.shape, bool)
    for _ in range(clicks):
        mask = predictor.add_click(*robot_click(mask, inside)) > predictor.threshold
        masks.append(mask)
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="starter,vit_b_448")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--robot-clicks", type=int, default=20, help="clicks of the IoU session (0: no IoU column)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    image, inside = test_image()
    print(
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}"
    )
    for model_name in args.models.split(","):
        if model_name == "starter":
            net = load_model(REPO / "weights" / "starter.safetensors", device)
        else:
            net = build_model(model_name).to(device).eval()
        size = net.native_image_size
        x = torch.rand(1, 4, *size, device=device)
        points = torch.tensor([[[size[0] / 2, size[1] / 2, 0.0], [-1.0, -1.0, -1.0]]], device=device)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            net(x, points)
        gflop = counter.get_total_flops() / 1e9
        rate = gemm_gflops(net, device, args.repeats)
        print(f"\n{model_name} at {size[0]} px: {gflop:.1f} GFLOP per forward; fp32 GEMM rate {rate:.0f} GFLOP/s\n")
        print(
            "| precision | runtime | forward (s) | of GEMM rate | s/click, 2 MP | min mask IoU vs torch fp32 "
            "| peak MiB |"
        )
        print("|---|---|---|---|---|---|---|")
        reference_masks = None
        for dtype_name in args.dtypes.split(","):
            try:
                dtype = resolve_dtype(dtype_name, device)
            except ValueError as exc:
                print(f"| {dtype_name} | - | skipped: {exc} | | | | |")
                continue
            for runtime in args.runtimes.split(","):
                use_runtime(net, runtime)

                def forward(net=net, x=x, points=points, dtype: torch.dtype = dtype) -> None:
                    with torch.inference_mode(), autocast(device, dtype):
                        net(x, points)

                forward_s = median_seconds(forward, device, args.repeats)
                predictor = Predictor(
                    net, device=device, dtype=dtype_name, flip=DEFAULT_FLIP, refine=DEFAULT_REFINE, runtime=runtime
                )
                clicks = []
                for _ in range(2):
                    predictor.set_image(image)
                    for click in CLICKS:
                        synchronize(device)
                        started = time.perf_counter()
                        predictor.add_click(*click)
                        clicks.append(time.perf_counter() - started)
                click_s = statistics.median(clicks[len(CLICKS) :])
                similarity = "-"
                if model_name == "starter" and args.robot_clicks:
                    masks = robot_masks(predictor, image, inside, args.robot_clicks)
                    if reference_masks is None:
                        reference_masks = masks
                    similarity = f"{min(iou(a, b) for a, b in zip(masks, reference_masks)):.4f}"
                fraction = gflop / forward_s / rate
                print(
                    f"| {dtype_name} | {runtime} | {forward_s:.3f} | {fraction:.0%} | {click_s:.3f} | {similarity} | "
                    f"{peak_memory_mib(device):.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
