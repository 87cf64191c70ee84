"""The runtime table: forward and per-click time of each runtime and precision, the fraction of the machine's matmul
rate a forward reaches, and how far each one's results are from the reference's (not a test).

    python benchmarks/runtimes.py [--models starter,vit_b_448] [--device cpu] [--dtypes fp32,bf16]
        [--runtimes torch,fast,onnx,onnx-int8,openvino] [--threads 2] [--repeats 5] [--pause 1]

``starter`` is the shipped checkpoint; other names are configs with random weights (time does not depend on the
weights; their masks are meaningless, so the IoU column is only given for checkpoints). Per model: the GFLOP of one
forward (PyTorch's FLOP counter); per precision: the fp32 rate of a GEMM of the forward's own largest shape (the ViT
MLP's first layer), timed in turns with the forwards; per (precision, runtime): the median forward (batch 1) and the
fraction of that GEMM rate it reaches, the median warm click of the served default refinement on a 2-MP image
(8-click sessions, back to back, and after ``--pause`` idle seconds as an annotator clicks), the largest logit
difference from ``fast``'s forward, the mask IoU against ``torch``/fp32 after each of 20 robot clicks (minimum), and
for the exported runtimes (model.export_runtime) the seconds their graph took to load, export included when it was not
cached. The runtimes take turns, so load from other processes falls on all of them. ``--robot-clicks 0 --runtimes
fast --repeats 1`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
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
from model.export_runtime import exported_network  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.refine import DEFAULT_FLIP, DEFAULT_REFINE  # noqa: E402
from model.runtime import RUNTIMES, check_runtime, is_exported  # noqa: E402


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


def gemm(net: torch.nn.Module, device: torch.device, calls: int = 10) -> tuple[Callable[[], None], float]:
    """``calls`` fp32 GEMMs of the ViT MLP's first layer at the native input, (tokens, C) x (C, 4C), and their GFLOP:
    the forward's largest GEMM shape (a fair ceiling for this network; a 3072-square GEMM runs a little faster). Timed
    in turns with the forwards, so that the rate and the forwards see the same load."""
    grid = net.backbone.grid_size
    tokens, channels = grid[0] * grid[1], net.backbone.pos_embed.shape[-1]
    a = torch.randn(tokens, channels, device=device)
    b = torch.randn(channels, 4 * channels, device=device)

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b)

    return run, calls * 2 * tokens * channels * 4 * channels / 1e9


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


def prepare(
    net: torch.nn.Module, runtime: str, x: torch.Tensor, points: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[Callable[[], torch.Tensor], float]:
    """The batch-1 forward of ``runtime`` (returning the logits) and the seconds its graph took to load, export
    included when the cache did not have it (0: an eager runtime)."""
    if is_exported(runtime):
        graph = exported_network(net, runtime, 1, tuple(x.shape[-2:]))
        return (lambda: graph(x, points)), graph.load_seconds

    def forward() -> torch.Tensor:
        use_runtime(net, runtime)
        with torch.inference_mode(), autocast(device, dtype):
            return net(x, points)["instances"].float()

    return forward, 0.0


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int, device: torch.device, pause: float = 0.0
) -> dict[str, float]:
    """Median seconds of each function, called in turns (one call each per round, the order alternating), so that
    load from other processes falls on all of them alike; ``pause``: seconds idle before each call (not timed)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(rounds):
        for name in list(fns) if round_ % 2 == 0 else list(reversed(fns)):
            time.sleep(pause)
            synchronize(device)
            started = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="starter,vit_b_448")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, of {', '.join(RUNTIMES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds idle before each click of the 'after a pause' column"
    )
    parser.add_argument("--robot-clicks", type=int, default=20, help="clicks of the IoU session (0: no IoU column)")
    args = parser.parse_args(argv)
    runtimes = [check_runtime(name) for name in args.runtimes.split(",")]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image, inside = test_image()
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads per runtime, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}"
        f"; load average {os.getloadavg()[0]:.2f}"
    )
    for model_name in args.models.split(","):
        torch.manual_seed(0)  # the same random weights every run: their exports are cached by the weights' digest
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
        gemm_run, gemm_gflop = gemm(net, device)
        print(f"\n{model_name} at {size[0]} px: {gflop:.1f} GFLOP per forward")
        for dtype_name in args.dtypes.split(","):
            try:
                dtype = resolve_dtype(dtype_name, device)
            except ValueError as exc:
                print(f"{dtype_name} skipped: {exc}")
                continue
            # The exported runtimes are fp32 graphs: they run once, with the fp32 rows.
            names = [r for r in runtimes if dtype == torch.float32 or not is_exported(r)]
            forwards, exports, predictors = {}, {}, {}
            for runtime in names:
                forwards[runtime], exports[runtime] = prepare(net, runtime, x, points, dtype, device)
                predictors[runtime] = Predictor(
                    net, device=device, dtype=dtype_name, flip=DEFAULT_FLIP, refine=DEFAULT_REFINE, runtime=runtime
                )
            reference = prepare(net, "fast", x, points, torch.float32, device)[0]()
            differences = {name: float((fn() - reference).abs().max()) for name, fn in forwards.items()}
            forward_s = interleaved_medians({**forwards, "gemm": gemm_run}, args.repeats, device)
            rate = gemm_gflop / forward_s["gemm"]

            def session(predictor: Predictor) -> None:
                predictor.set_image(image)
                for click in CLICKS:
                    predictor.add_click(*click)

            sessions = interleaved_medians({n: (lambda p=p: session(p)) for n, p in predictors.items()}, 3, device)
            paused: dict[str, list[float]] = {name: [] for name in names}
            for name, predictor in list(predictors.items()) * 2:
                predictor.set_image(image)
                for click in CLICKS:
                    time.sleep(args.pause)  # the annotator looks at the mask before the next click
                    started = time.perf_counter()
                    predictor.add_click(*click)
                    paused[name].append(time.perf_counter() - started)
            similarity: dict[str, str] = {name: "-" for name in names}
            if model_name == "starter" and args.robot_clicks:
                reference_masks = robot_masks(
                    Predictor(net, device=device, flip=DEFAULT_FLIP, refine=DEFAULT_REFINE, runtime="torch"),
                    image,
                    inside,
                    args.robot_clicks,
                )
                for name, predictor in predictors.items():
                    masks = robot_masks(predictor, image, inside, args.robot_clicks)
                    similarity[name] = f"{min(iou(a, b) for a, b in zip(masks, reference_masks)):.4f}"
            print(f"\n{dtype_name}: fp32 GEMM rate, timed in turns with the forwards: {rate:.0f} GFLOP/s\n")
            print(
                "| precision | runtime | forward (s) | of GEMM rate | s/click, 2 MP | s/click after a pause "
                "| max abs logit diff vs fast "
                "| min mask IoU vs torch fp32 | graph load, export included (s) |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for name in names:
                click_s = sessions[name] / len(CLICKS)
                export = f"{exports[name]:.1f}" if exports[name] else "-"
                print(
                    f"| {dtype_name} | {name} | {forward_s[name]:.3f} | {gflop / forward_s[name] / rate:.0%} | "
                    f"{click_s:.3f} | {statistics.median(paused[name]):.3f} | {differences[name]:.2e} | "
                    f"{similarity[name]} | {export} |",
                    flush=True,
                )
        print(f"\nload average after {model_name}: {os.getloadavg()[0]:.2f}; peak {peak_memory_mib(device):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
